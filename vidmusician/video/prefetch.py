"""Frames decoded in a background thread, a few chunks ahead of the encoder.

Decoding and encoding overlap (decord and torch both release the GIL), while a
bounded queue caps the frames held in memory. :func:`stoppable_put` is the
producer's side of such a queue, for any thread that feeds one.
"""

from __future__ import annotations

import queue
import threading

import numpy as np

from .reader import FrameReader

# Chunks decoded ahead of the encoder: enough to hide decode latency, and the
# bound on frames held in memory.
_PREFETCH = 2


def prefetch(reader: FrameReader, chunks: list[np.ndarray], pin: bool = False):
    """Yields ``(chunk, frames)``, decoding up to ``_PREFETCH`` chunks ahead in a thread.

    With ``pin``, frames come in pinned memory, so the copy to the GPU is asynchronous.

    Errors in the decoder thread are re-raised here; if the consumer stops early
    (an error, Ctrl-C) the thread stops at its next chunk.
    """
    out: queue.Queue = queue.Queue(maxsize=_PREFETCH)
    stop = threading.Event()
    done = object()
    put = stoppable_put(out, stop)

    def decode():
        try:
            for chunk in chunks:
                frames = reader.read(chunk)
                if not put((chunk, frames.pin_memory() if pin else frames)):
                    return
            put(done)
        except BaseException as exc:  # handed to the consumer, which raises it
            put(exc)

    thread = threading.Thread(target=decode, name="vidmusician-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = out.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def stoppable_put(out: queue.Queue, stop: threading.Event):
    """``put(item) -> bool`` for a producer thread: waits for room in ``out``; False once ``stop`` is set.

    The consumer sets ``stop`` when it quits early (an error, Ctrl-C), so a producer
    blocked on a full queue does not wait forever.
    """
    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    return put
