"""Guidance among the conditional's plausible tokens (``Guidance.plausibility``, the default 0.01).

Adapters trained on lossy soundtracks learn the codec's noise, which lifts tokens the
frozen base rules out; guidance extrapolates from the base through the adapted model,
so MusicGen's guidance lifts them further, above the event the video calls for. The
numbers below are the shape of what was measured at a flash (docs/alignment.md).
"""

from __future__ import annotations

import pytest
import torch

from vidmusician import cli
from vidmusician.errors import ConfigError
from vidmusician.generation.guidance import DEFAULT_PLAUSIBILITY, GenerationParams, Guidance, sample_token

EVENT, LOOP = 0, 1  # tokens 2.. are what the base rules out
# [1, 1, card] logits of one step at a flash: the base (null) expects the loop; the adapted
# model (cond) expects the event, and has lifted the rest from -16.5 to -9.5 below its top.
NULL = torch.tensor([[[10.0, 12.0] + [-4.5] * 4]])
COND = torch.tensor([[[7.5, 6.5] + [-2.0] * 4]])


def probs(guidance: Guidance, *branches: torch.Tensor) -> torch.Tensor:
    return torch.softmax(guidance.combine(torch.cat(branches), 1), dim=-1)[0, 0]


def test_musicgens_guidance_lifts_the_tail_above_the_event_and_the_cut_does_not():
    plain = probs(Guidance.two_branch(3.0, plausibility=0.0), COND, NULL)
    cut = probs(Guidance.two_branch(3.0, plausibility=0.1), COND, NULL)
    assert plain[EVENT] < 0.2 and plain[2:].sum() > 0.8, plain  # the symptom
    assert cut[EVENT] > 0.99 and torch.equal(cut[2:], torch.zeros(4)), cut
    # Among the kept tokens the guided logits are MusicGen's own.
    kept = Guidance.two_branch(3.0, plausibility=0.1).combine(torch.cat([COND, NULL]), 1)[0, 0, :2]
    torch.testing.assert_close(kept, Guidance.two_branch(3.0).combine(torch.cat([COND, NULL]), 1)[0, 0, :2])


@pytest.mark.parametrize("alpha, kept", [(0.5, [EVENT]), (0.3, [EVENT, LOOP]), (1e-5, [EVENT, LOOP, 2, 3, 4, 5])])
def test_the_cut_is_relative_to_the_conditionals_top_token(alpha, kept):
    # LOOP is e^-1 = 0.37 of the event under cond; the tail e^-9.5 = 7.5e-5.
    guided = Guidance.two_branch(3.0, plausibility=alpha).combine(torch.cat([COND, NULL]), 1)[0, 0]
    assert torch.isfinite(guided).nonzero().flatten().tolist() == kept


def test_three_branches_cut_by_the_text_and_video_branch():
    # The text branch is the base here (no text effect): only text+video knows the event.
    three = Guidance.three_branch(2.0, 3.0, plausibility=0.2)
    guided = three.combine(torch.cat([COND, NULL, NULL]), 1)[0, 0]
    assert torch.isfinite(guided).nonzero().flatten().tolist() == [EVENT, LOOP]
    # The branch that decides is the first: with the base first, the event (e^-2 of its top) goes.
    swapped = three.combine(torch.cat([NULL, COND, NULL]), 1)[0, 0]
    assert torch.isfinite(swapped).nonzero().flatten().tolist() == [LOOP]


def test_without_video_the_step_is_musicgens_whatever_the_cut():
    g = Guidance.two_branch(3.0, video=False, plausibility=0.1)
    assert g.plausibility == 0.0
    assert GenerationParams(plausibility=0.3).guidance(has_video=False).plausibility == 0.0
    assert GenerationParams(plausibility=0.3).guidance(has_video=True).plausibility == 0.3
    assert GenerationParams().plausibility == DEFAULT_PLAUSIBILITY > 0


def test_the_cut_spares_the_samples_without_a_video():
    g = Guidance.two_branch(3.0, plausibility=0.1)
    batch = torch.cat([COND, COND, NULL, NULL])  # [cond a; cond b; null a; null b], rows stacked by branch
    guided = g.combine(batch, 2, filtered=torch.tensor([True, False]))
    torch.testing.assert_close(guided[0], g.combine(torch.cat([COND, NULL]), 1)[0])  # a has a video: cut
    torch.testing.assert_close(guided[1], Guidance.two_branch(3.0).combine(torch.cat([COND, NULL]), 1)[0])
    assert torch.isinf(guided[0]).any() and torch.isfinite(guided[1]).all()


def peaked_adapted_musicgen():
    """Tiny adapters with perturbed weights and a backbone whose logits are peaked, as a trained one's are."""
    from conftest import perturb_adapters, tiny_config
    from vidmusician.model import attach_adapters
    from vidmusician.random_backbones import tiny_musicgen

    musicgen = tiny_musicgen()
    vm = attach_adapters(musicgen, tiny_config(musicgen))
    perturb_adapters(vm, 0.5)
    with torch.no_grad():
        for linear in vm.lm.linears:
            linear.weight.mul_(30)
    return vm.eval()


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_a_sample_without_video_gets_its_music_alone_in_a_batch_with_videos(engine):
    """The default cut acts on the samples with a video only: the null video contributes nothing."""
    from vidmusician.video.features import VideoFeatures

    vm = peaked_adapted_musicgen()
    g = torch.Generator().manual_seed(0)
    video = VideoFeatures(torch.randn(3, 32, generator=g), torch.rand(75, 16, generator=g), 1.0, 25.0, 3.0, "tiny",
                          "gelu")
    vm.set_generation_params(engine=engine)
    assert vm.generation_params.plausibility > 0
    for text in (None, "calm piano"):
        _, mixed = vm.generate([video, None], texts=[text, text], duration=2.0, seed=[5, 7], return_tokens=True)
        _, alone = vm.generate([None], texts=[text], duration=2.0, seed=[7], return_tokens=True)
        assert torch.equal(mixed[1], alone[0]), text
        vm.set_generation_params(engine=engine, plausibility=0.0)  # the sample with video does feel the cut
        _, uncut = vm.generate([video, None], texts=[text, text], duration=2.0, seed=[5, 7], return_tokens=True)
        assert not torch.equal(uncut[0], mixed[0]) and torch.equal(uncut[1], mixed[1]), text
        vm.set_generation_params(engine=engine)


@pytest.mark.parametrize("coef", [1e6, 1e30, -1e30])
def test_huge_coefficients_give_a_finite_distribution(coef):
    """float32 throughout: finite while |coef| times the branch differences stays below 3.4e38."""
    for guidance in (Guidance.two_branch(coef, plausibility=0.1), Guidance.three_branch(coef, 2 * coef, 0.1)):
        branches = [COND, NULL] if guidance.branches == 2 else [COND, NULL, NULL]
        logits = guidance.combine(torch.cat(branches).half(), 1)  # fp16, as on a GPU
        assert logits.dtype == torch.float32
        p = torch.softmax(logits, dim=-1)
        assert torch.isfinite(p).all() and p.sum().item() == pytest.approx(1.0)
        token = sample_token(logits, GenerationParams(top_k=4))
        assert token.item() in (EVENT, LOOP)  # the tail never plays


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
def test_a_bad_plausibility_is_refused(value):
    with pytest.raises(ConfigError, match="plausibility must be in \\[0, 1\\]"):
        GenerationParams(plausibility=value)


def test_cli_bad_plausibility_is_one_line(tmp_path, capsys):
    from media import flash_video

    clip = flash_video(tmp_path / "clip.mp4", [0.2], duration=0.5)
    out = tmp_path / "out.wav"
    with pytest.raises(SystemExit) as exit_:  # refused by the argument parser, as the console script exits
        cli.main(["generate", str(clip), "--backbone", "tiny", "-o", str(out), "-q", "--plausibility", "2"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--plausibility: must be in [0, 1], got 2" in err[0], err
    assert not out.exists()


def test_cli_passes_the_plausibility_on(tmp_path, monkeypatch):
    import vidmusician.pipeline as pipeline

    seen = []

    def fake_generate(video, **kwargs):
        seen.append(kwargs)
        raise ConfigError("stop here")

    monkeypatch.setattr(pipeline, "generate", fake_generate)
    for flags in ([], ["--plausibility", "0"]):
        assert cli.main(["generate", str(tmp_path / "v.mp4"), "-o", str(tmp_path / "o.wav"), "-q", *flags]) == 2
    assert "plausibility" not in seen[0]  # the library's default
    assert seen[1]["plausibility"] == 0.0
