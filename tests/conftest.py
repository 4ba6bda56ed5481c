"""Shared fixtures: tiny backbones and adapters built with audiocraft's own classes (no download)."""

from __future__ import annotations

import logging
import os
import signal

import pytest
import torch

# Processes a test leaves running are killed at its end (tests/leftovers.py).
pytest_plugins = ["leftovers"]

logging.getLogger("xformers").setLevel(logging.ERROR)
# The test models are tiny: one thread avoids torch's threads spin-waiting on each
# other at every small op (several times faster on a 2-core machine). VIDMUSICIAN_TEST_THREADS
# sets another count: the cross-kernel run splits reductions across threads, as larger machines do.
torch.set_num_threads(int(os.environ.get("VIDMUSICIAN_TEST_THREADS", "1")))

# Under pytest-xdist (`make test`), the longest files are handed out first, so that none of
# them starts last and runs alone at the end.
SLOWEST_FILES = ("test_odd_names.py", "test_train_resume.py", "test_learned_base.py", "test_prepare_scale.py",
                 "test_demo_server.py", "test_adapters.py", "test_alignment_benchmark.py", "test_train_learning.py")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
        items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept within


# Device parameter of the tests that also run on a GPU (skipped where there is none); `-m cuda` selects
# these cases and the other tests of CUDA's own behaviour (what benchmarks/gpu.sh runs on a GPU).
NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, NEEDS_CUDA])]


def takes_ctrl_c() -> None:
    """``preexec_fn`` of a child a test interrupts with SIGINT: Ctrl+C's default action there.

    A shell without job control starts ``cmd &`` with SIGINT ignored, and children inherit
    that (Python then installs no KeyboardInterrupt handler): a suite started that way would
    see a SIGINT test hang, where a terminal's Ctrl+C stops the command.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# Widths of the tiny visual encoder (`load_encoder('tiny')`): CLIP embedding and patch count.
TINY_GLOBAL_DIM = 32
TINY_LOCAL_DIM = 16


def tiny_config(musicgen, **overrides):
    from vidmusician.config import AdapterConfig

    kwargs = dict(global_dim=TINY_GLOBAL_DIM, local_dim=TINY_LOCAL_DIM, memory_dim=32, attn_dim=16,
                  attn_heads=2, encoder="tiny", rhythm_rank=8)
    kwargs.update(overrides)
    return AdapterConfig.for_backbone(musicgen, **kwargs)


def random_video_batch(size: int, present, num_frames: int = 200, num_global: int = 8, seed: int = 0,
                       frame_rate: float = 50.0):
    """A VideoBatch of random features; `present[i]` False makes sample i a null video."""
    from vidmusician.adapter.context import VideoBatch

    g = torch.Generator().manual_seed(seed)
    return VideoBatch(
        global_feats=torch.randn(size, num_global, TINY_GLOBAL_DIM, generator=g),
        global_mask=torch.ones(size, num_global, dtype=torch.bool),
        local=torch.rand(size, num_frames, TINY_LOCAL_DIM, generator=g),
        present=torch.tensor(present, dtype=torch.bool),
        global_fps=1.0, frame_rate=frame_rate)


def perturb_adapters(vm, scale: float = 0.5, seed: int = 1):
    """Moves every adapter weight away from its initialization."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in vm.adapter_state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn(tensor.shape, generator=g).to(tensor.device) * scale)


def save_tiny_adapter(folder, scale: float = 0.5, seed: int = 1):
    """A stage-2 linear adapter on the (50 Hz) `tiny` backbone, every weight moved from its init, saved."""
    from vidmusician.model import attach_adapters
    from vidmusician.random_backbones import tiny_musicgen

    musicgen = tiny_musicgen()
    vm = attach_adapters(musicgen, tiny_config(musicgen, stage=2))
    perturb_adapters(vm, scale=scale, seed=seed)
    vm.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny():
    """A factory of identical tiny MusicGens (same seed, same weights)."""
    from vidmusician.random_backbones import tiny_musicgen

    return lambda **kw: tiny_musicgen(**kw)


@pytest.fixture(autouse=True)
def numerics_seed(request):
    """Seeds the global RNG before each ``numerics`` test.

    Their adapters draw random weights from the global RNG; unseeded, the rounding they
    compare would depend on which tests ran before (a subset, another order). The
    cross-kernel measurement (scripts/numerics_spread.py) sets VIDMUSICIAN_TEST_SEED
    to measure over several draws.
    """
    if request.node.get_closest_marker("numerics"):
        torch.manual_seed(int(os.environ.get("VIDMUSICIAN_TEST_SEED", "0")))
