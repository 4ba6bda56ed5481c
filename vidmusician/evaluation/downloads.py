"""Weights the audio metrics download once, on first use, into the torch hub cache (VGGish, PaSST).

torch.hub and timm download with urllib and give it no timeout: on a network that
drops packets, or behind a proxy that never answers, the first use of a metric
waited for good. :func:`download_timeout` bounds each wait, and
:func:`weights_unavailable` is the one line said when the weights cannot be had.
"""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

from ..errors import ConfigError, one_line

__all__ = ["DOWNLOAD_TIMEOUT", "download_timeout", "weights_unavailable"]

# Seconds a download waits for the server (to connect, or for its next bytes) before it
# gives up. A slow download that keeps sending is not cut; a silent one ends in time to
# say so, long after any reachable server answers.
DOWNLOAD_TIMEOUT = 30.0


@contextlib.contextmanager
def download_timeout():
    """Sockets opened in the block wait at most :data:`DOWNLOAD_TIMEOUT` seconds for the network.

    torch.hub's and timm's downloads call ``urlopen`` without a timeout, which then takes
    the socket module's default: that default is set for the block and restored after.
    Name resolution is not bounded by it (it fails at once without a network).
    """
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def weights_unavailable(what: str, exc: BaseException, fix: str) -> ConfigError:
    """One line for weights that download once, on first use, and cannot be had now.

    Args:
        what: The weights, named as a user knows them (the model and its package).
        exc: What the download raised.
        fix: How to do without the network (a local file, the file put into the cache,
            leaving the metric out).
    """
    import torch

    cache = Path(torch.hub.get_dir()) / "checkpoints"
    reason = getattr(exc, "reason", exc)  # urllib's URLError wraps what the socket raised
    why = (f"no answer in {DOWNLOAD_TIMEOUT:g} s" if isinstance(reason, TimeoutError)
           else f"{type(exc).__name__}: {one_line(exc)}")
    return ConfigError(f"{what} are downloaded once, on first use, into {cache} (needs internet), and cannot be "
                       f"downloaded now ({why}); connect once, or {fix}")
