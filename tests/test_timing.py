"""Timing: the 25 fps video on the codec's token timeline, against a reference written from its definition.

DESIGN.md: "the local feature for step s is the video at time (frame_offset + s) /
frame_rate", the change signal linearly interpolated between its frames (at
``local_fps``), ramping to zero over the frame after the last one, zero before the
video and after it. The reference below is numpy's ``interp`` on that definition;
the code under test is :func:`resample_local` (through :meth:`VideoBatch.from_features`
and the context's per-window slice). The test backbones run at the real codec's 50 Hz,
so the 25 fps signal really is resampled.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vidmusician.adapter.context import VideoBatch, resample_local
from vidmusician.video.features import VideoFeatures

LOCAL_FPS = 25.0  # the local signal's rate (FeatureConfig.local_fps)


def reference(local: np.ndarray, local_fps: float, times: np.ndarray) -> np.ndarray:
    """[len(times), P]: the change signal at each time, from the definition (float64 numpy)."""
    knots = np.arange(len(local) + 1) / local_fps  # the frames' times, and one more where it has ramped to 0
    values = np.concatenate([local, np.zeros((1, local.shape[1]))])
    return np.stack([np.interp(times, knots, values[:, p], left=0.0, right=0.0) for p in range(local.shape[1])], 1)


def signal(frames: int, patches: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(frames, patches, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("local_fps, frame_rate", [(25.0, 50.0), (25.0, 25.0), (30.0, 50.0), (10.0, 32.0)])
@pytest.mark.parametrize("offset", [0.0, 0.01, 0.04, -0.1, 1.37])
def test_resample_local_is_the_video_at_each_steps_time(local_fps, frame_rate, offset):
    local = signal(37)  # 1.48 s at 25 fps: rows past the end too
    steps = 120
    got = resample_local(local, local_fps, frame_rate, steps, offset=offset)
    times = offset + np.arange(steps) / frame_rate
    np.testing.assert_allclose(got.numpy(), reference(local.numpy(), local_fps, times), rtol=0, atol=1e-12)


def test_a_batch_and_each_window_read_the_video_at_frame_offset_plus_step_over_the_frame_rate():
    """What the adapters see: the batch at the codec's 50 Hz, and the context's slice for each window."""
    from vidmusician.adapter.context import VideoContext

    frame_rate = 50.0
    short = VideoFeatures(torch.rand(2, 4), signal(30, 4, seed=1).float(), 1.0, LOCAL_FPS, 1.2, "tiny")
    long = VideoFeatures(torch.rand(3, 4), signal(70, 4, seed=2).float(), 1.0, LOCAL_FPS, 2.8, "tiny")
    batch = VideoBatch.from_features([short, None, long], frame_rate)
    assert batch.local.shape == (3, 140, 4)  # 2.8 s at 50 Hz: the longest video
    for i, feats in ((0, short), (2, long)):
        want = reference(feats.local_feats.double().numpy(), LOCAL_FPS, np.arange(140) / frame_rate)
        np.testing.assert_allclose(batch.local[i].numpy(), want, rtol=0, atol=1e-6)
    assert not batch.local[1].any()

    context = VideoContext(max_global_tokens=30)
    context.batch = batch
    context.rows = torch.tensor([0, 2])  # the model rows carrying video: samples 0 and 2
    for frame_offset, position, steps in ((0, 0, 5), (50, 7, 1), (125, 3, 20)):
        got = context.local(frame_offset + position, steps)
        times = (frame_offset + position + np.arange(steps)) / frame_rate
        for row, feats in zip(got, (short, long)):
            want = reference(feats.local_feats.double().numpy(), LOCAL_FPS, times)
            np.testing.assert_allclose(row.numpy(), want, rtol=0, atol=1e-6)


def before_the_start_as_the_first_frame(local: np.ndarray, local_fps: float, times: np.ndarray) -> np.ndarray:
    """The reference with the video's first frame before it (what the rhythm input's earlier frames read)."""
    return reference(local, local_fps, np.maximum(times, 0.0))


def test_the_rhythm_input_reads_each_lag_from_the_whole_video_whatever_the_window():
    """Block j of a step's features is the signal lags[j] codec frames earlier, the first frame's
    before the video: the earlier frames of a window that starts mid-video are read, not zeroed."""
    from vidmusician.adapter.context import VideoContext

    frame_rate, lags = 50.0, (0, 2, 5)
    short = VideoFeatures(torch.rand(2, 4), signal(30, 4, seed=1).float(), 1.0, LOCAL_FPS, 1.2, "tiny")
    long = VideoFeatures(torch.rand(3, 4), signal(70, 4, seed=2).float(), 1.0, LOCAL_FPS, 2.8, "tiny")
    context = VideoContext(max_global_tokens=30)
    context.batch = VideoBatch.from_features([short, None, long], frame_rate)
    context.rows = torch.tensor([2, 0])  # the model rows carrying video: samples 2 and 0
    for start, steps in ((0, 6), (1, 1), (3, 4), (57, 1), (64, 9), (135, 10), (150, 3)):
        got = context.local(start, steps, lags)
        assert got.shape == (2, steps, 4 * len(lags))
        for row, feats in zip(got, (long, short)):
            for j, lag in enumerate(lags):
                times = (start - lag + np.arange(steps)) / frame_rate
                want = before_the_start_as_the_first_frame(feats.local_feats.double().numpy(), LOCAL_FPS, times)
                np.testing.assert_allclose(row[:, 4 * j:4 * (j + 1)].numpy(), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("local_fps, frame_rate, lags", [(25.0, 50.0, (0, 2, 4)), (25.0, 25.0, (0, 1, 2)),
                                                         (30.0, 50.0, (0, 2, 4)), (10.0, 32.0, (0, 3, 6))])
def test_rhythm_lags_are_whole_local_frames_in_codec_frames(local_fps, frame_rate, lags):
    from vidmusician.config import AdapterConfig

    config = AdapterConfig(dim=32, num_layers=2, frame_rate=frame_rate, local_fps=local_fps, rhythm_rank=None,
                           rhythm_context=2)
    assert config.rhythm_lags == lags
    assert config.replace(rhythm_context=0).rhythm_lags == (0,)


@pytest.mark.parametrize("name", ["tiny", "tiny-t5", "tiny-learned"])
def test_test_backbones_have_the_real_codec_timing(name):
    """50 Hz tokens at 32 kHz, as facebook/musicgen-*: the 25 fps video is resampled on every timing test."""
    from vidmusician.backbones import load_codec

    codec = load_codec(name, device="cpu")
    assert (codec.frame_rate, codec.sample_rate) == (50, 32000)
