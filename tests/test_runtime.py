"""The default device and seeded blocks (vidmusician.runtime)."""

import torch

from vidmusician.runtime import default_device, seeded


def _draws(seed, n):
    return torch.rand(n, generator=torch.Generator().manual_seed(seed))


def test_seeded_draws_repeat_and_leave_the_callers_stream_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    with seeded(123):
        first = torch.rand(4)
    with seeded(123, device="cpu"):
        second = torch.rand(4)
    assert torch.equal(first, second)
    assert torch.equal(first, _draws(123, 4))
    with seeded(124):
        assert not torch.equal(torch.rand(4), first)
    assert torch.equal(torch.rand(3), expected)  # as if the blocks had not run


def test_seeded_with_no_seed_draws_from_the_callers_stream():
    torch.manual_seed(7)
    expected = torch.rand(2)
    torch.manual_seed(7)
    with seeded(None):
        drawn = torch.rand(2)
    assert torch.equal(drawn, expected)


def test_default_device_is_one_type():
    assert default_device("cpu") == torch.device("cpu")
    assert default_device(torch.device("cpu")) == torch.device("cpu")
    assert str(default_device("cuda:1")) == "cuda:1"  # the name audiocraft's loaders compare with
    assert default_device() == torch.device("cuda" if torch.cuda.is_available() else "cpu")
