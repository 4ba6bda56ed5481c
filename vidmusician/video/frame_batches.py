"""Visual features of many videos, their frames encoded in batches that span videos.

Dataset preparation meets many short videos: a few seconds at 25 frames/s give
batches of tens of frames, too few to keep a GPU busy, and each video's first
frames would wait for its decoding. :class:`CrossVideoBatcher` decodes the
videos one after another in a thread and fills every encoder batch with the
frames that come next, whichever video they belong to.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..errors import ConfigError, VidMusicianError
from .encoders import VisualEncoder
from .features import FeatureBuilder, VideoFeatures, extract_features
from .prefetch import stoppable_put
from .reader import FrameReader

# Frames per encoder batch on a GPU: ViT-B/32 sees 50 tokens a frame, so 256 frames
# make 12,800-row matmuls, enough to fill one; held as float32 input they take
# 154 MB, and the decoded frames waiting behind them (three chunks of 64, uint8 at
# the encoder's size) about 40 MB more. On a CPU a larger batch buys nothing: 256
# ran 7% slower than 64 there (benchmarks/prepare.py, docs/performance.md).
GPU_ENCODER_BATCH, CPU_ENCODER_BATCH = 256, 64


def default_encoder_batch(device) -> int:
    """Frames per encoder batch on ``device`` when none is asked for."""
    return GPU_ENCODER_BATCH if torch.device(device).type == "cuda" else CPU_ENCODER_BATCH


def video_features(encoder: VisualEncoder, videos: list[Path], global_fps: float, local_fps: float,
                   batch: int | None = None, across: bool = True
                   ) -> Iterator[VideoFeatures | VidMusicianError]:
    """The features of each video, in order, or the error that stopped it.

    Args:
        batch: Frames per encoder batch (None: :func:`default_encoder_batch`).
        across: Batches span videos (:class:`CrossVideoBatcher`). False: each video
            alone through :func:`~vidmusician.features.extract_features`, as before
            batches spanned videos (kept to measure the difference).
    """
    if across:
        yield from CrossVideoBatcher(encoder, videos, global_fps, local_fps, batch)
        return
    batch = batch or default_encoder_batch(encoder.device)
    for video in videos:
        try:
            yield extract_features(video, encoder, global_fps, local_fps, batch_size=batch)
        except VidMusicianError as exc:
            yield exc


class CrossVideoBatcher:
    """Iterates over the features of ``videos``, in their order, encoding frames in batches across videos.

    A thread decodes the videos in turn, in chunks of a quarter batch, a chunk
    ahead of the encoder. Each chunk is preprocessed (videos of other
    sizes are cropped to the same image size) and its frames go into the batch
    being filled; a full batch runs through the encoder and its results are split
    back to the videos they came from (a :class:`~vidmusician.features.FeatureBuilder`
    each). A video is yielded as soon as its last frame is encoded and every video
    before it was yielded: the last video waits for the final, partial batch.

    A video that cannot be read (at opening or at any chunk) is yielded as its
    error, in its place; its frames still waiting in the batch are dropped. The
    other videos' features do not depend on the batches their frames shared: on
    the CPU they are, bit for bit, those of
    :func:`~vidmusician.features.extract_features` (see
    :meth:`~vidmusician.encoders.VisualEncoder.embed`).

    Frames held at a time, fewer than two batches: the batch (on the encoder's
    device) and the rest of the chunk that completed it, a chunk waiting in the
    queue, and one the thread holds until there is room.

    Args:
        encoder: The visual encoder.
        videos: Video files, in the order their features are wanted.
        global_fps, local_fps: Rates of the two feature grids.
        batch: Frames per encoder batch (None: :func:`default_encoder_batch`).

    Yields:
        Per video, its :class:`~vidmusician.features.VideoFeatures`, or the
        :class:`~vidmusician.errors.VidMusicianError` that stopped it.

    Raises:
        ConfigError: ``batch`` is not positive.
    """

    def __init__(self, encoder: VisualEncoder, videos: list[Path], global_fps: float, local_fps: float,
                 batch: int | None = None):
        batch = default_encoder_batch(encoder.device) if batch is None else batch
        if not (isinstance(batch, int) and batch >= 1):
            raise ConfigError(f"--encoder-batch must be a positive number of frames, got {batch}")
        self.encoder, self.videos, self.batch = encoder, list(videos), batch
        self.global_fps, self.local_fps = float(global_fps), float(local_fps)
        self._chunk = -(-batch // 4)  # frames decoded at a time: three chunks, at most, wait behind a batch

    def __iter__(self) -> Iterator[VideoFeatures | VidMusicianError]:
        items: queue.Queue = queue.Queue(maxsize=1)
        stop = threading.Event()  # set when the consumer is gone (done, an error, a SIGTERM)
        thread = threading.Thread(target=self._decode, args=(stoppable_put(items, stop),), name="vidmusician-decode",
                                  daemon=True)
        thread.start()
        try:
            yield from self._encode(items.get)
        finally:
            stop.set()
            thread.join()

    def _decode(self, put) -> None:
        """The decoding thread: ``("video", i, builder)``, then ``("frames", i, chunk, frames)`` per chunk, or
        ``("error", i, exc)``; ``("end",)`` at the end, ``("fatal", exc)`` on anything else."""
        pin = self.encoder.device.type == "cuda"  # pinned memory: the copy to the GPU is asynchronous
        try:
            for i, video in enumerate(self.videos):
                try:
                    reader = FrameReader(video, size=self.encoder.resize_size)
                    builder = FeatureBuilder(reader, self.encoder, self.global_fps, self.local_fps)
                    if not put(("video", i, builder)):
                        return
                    for k in range(0, len(builder.frames), self._chunk):
                        chunk = builder.frames[k:k + self._chunk]
                        frames = reader.read(chunk)
                        if not put(("frames", i, chunk, frames.pin_memory() if pin else frames)):
                            return
                except VidMusicianError as exc:
                    if not put(("error", i, exc)):
                        return
            put(("end",))
        except BaseException as exc:  # a bug, not a bad video: the consumer raises it
            put(("fatal", exc))

    def _encode(self, get) -> Iterator[VideoFeatures | VidMusicianError]:
        """The consumer: fills batches from the decoded chunks, runs them, yields finished videos in order."""
        videos: dict[int, FeatureBuilder | VidMusicianError] = {}
        pieces: list[tuple[int, np.ndarray, torch.Tensor]] = []  # (video, frame indices, images) of the batch
        filled, first = 0, 0  # frames in the batch; the next video to yield
        while (item := get())[0] != "end":
            if item[0] == "fatal":
                raise item[1]
            kind, i, *rest = item
            if kind == "video":
                videos[i] = rest[0]
            elif kind == "error":
                videos[i] = rest[0]
                pieces = [p for p in pieces if p[0] != i]
                filled = sum(len(p[1]) for p in pieces)
            else:
                chunk, images = rest[0], self.encoder.preprocess(rest[1])
                while len(chunk):  # a chunk may finish one batch and start the next
                    n = min(self.batch - filled, len(chunk))
                    pieces.append((i, chunk[:n], images[:n]))
                    chunk, images, filled = chunk[n:], images[n:], filled + n
                    if filled == self.batch:
                        self._run(pieces, videos)
                        pieces, filled = [], 0
            while first in videos and _finished(videos[first]):
                yield _result(videos.pop(first))
                first += 1
        if pieces:
            self._run(pieces, videos)
        for i in range(first, len(self.videos)):
            yield _result(videos.pop(i))

    def _run(self, pieces: list, videos: dict) -> None:
        """Encodes one batch and hands each video its rows."""
        emb, tokens = self.encoder.embed(torch.cat([images for _, _, images in pieces]))
        start = 0
        for i, chunk, _ in pieces:
            videos[i].add(chunk, emb[start:start + len(chunk)], tokens[start:start + len(chunk)])
            start += len(chunk)


def _finished(video: FeatureBuilder | VidMusicianError) -> bool:
    return isinstance(video, VidMusicianError) or video.complete


def _result(video: FeatureBuilder | VidMusicianError) -> VideoFeatures | VidMusicianError:
    return video if isinstance(video, VidMusicianError) else video.result()
