"""Weights the audio metrics download once, on first use, into the torch hub cache (VGGish, PaSST).

torch.hub and timm download with urllib and give it no timeout: on a network that
drops packets, or behind a proxy that never answers, the first use of a metric
waited for good. :func:`check_download` refuses at once what cannot be downloaded (offline mode
set, or a server that gives no answer within a bounded time, name lookup included),
:func:`download_timeout` bounds each wait of the download itself, and
:func:`weights_unavailable` is the one line said when the weights cannot be had.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ..errors import ConfigError, one_line

__all__ = ["DOWNLOAD_TIMEOUT", "check_download", "download_timeout", "weights_unavailable"]

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


def check_download(what: str, url: str, fix: str) -> None:
    """Refuses at once weights that are not in the torch hub cache and cannot be downloaded now.

    Before torch.hub or timm download ``url`` (and say ``Downloading: ...``): with offline
    mode set (``HF_HUB_OFFLINE``, the switch that keeps every other download of vidmusician
    from the network), nothing is asked of it; otherwise one request asks the server, and no
    answer within :data:`DOWNLOAD_TIMEOUT` seconds (name lookup included, which the socket
    timeout of :func:`download_timeout` does not bound) or a failed connection is the one line.

    Args:
        what: The weights, named as a user knows them (see :func:`weights_unavailable`).
        url: Where they download from; the cache holds them under its last part.
        fix: How to do without the network.

    Raises:
        ConfigError: The weights are not in the cache, and offline mode is set or the server
            cannot be reached.
    """
    import torch

    from ..hub_reach import offline_set

    if (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urllib.parse.urlparse(url).path)).is_file():
        return
    if offline_set():
        raise weights_unavailable(what, None, fix, why="HF_HUB_OFFLINE is set",
                                  online="run it once online without HF_HUB_OFFLINE")
    failure = _no_answer(url)
    if failure is not None:
        raise weights_unavailable(what, failure, fix)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer: the probe does not follow it (to a download it would start)."""

    def redirect_request(self, *args, **kwargs):
        return None


def _no_answer(url: str) -> BaseException | None:
    """What keeps a request for ``url`` from an answer within :data:`DOWNLOAD_TIMEOUT` seconds
    (a TimeoutError where none came); None when the server answered, an HTTP error included."""
    outcome: list = []

    def probe() -> None:
        request = urllib.request.Request(url, method="HEAD")
        try:
            with urllib.request.build_opener(_NoRedirect).open(request, timeout=DOWNLOAD_TIMEOUT):
                outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)
        except Exception as exc:  # noqa: BLE001 - any failure to reach the server
            outcome.append(exc)

    # A daemon thread: one still waiting on a name lookup or a silent proxy is left behind
    # without keeping the interpreter from exiting (as vidmusician.hub_reach.no_answer's).
    thread = threading.Thread(target=probe, name="vidmusician-download-probe", daemon=True)
    thread.start()
    thread.join(DOWNLOAD_TIMEOUT)
    return outcome[0] if outcome else TimeoutError()


def weights_unavailable(what: str, exc: BaseException | None, fix: str, why: str | None = None,
                        online: str = "connect once") -> ConfigError:
    """One line for weights that download once, on first use, and cannot be had now.

    Args:
        what: The weights, named as a user knows them (the model and its package).
        exc: What the download raised.
        fix: How to do without the network (a local file, the file put into the cache,
            leaving the metric out).
        why: Why, where no exception says it.
        online: How to download them once.
    """
    import torch

    cache = Path(torch.hub.get_dir()) / "checkpoints"
    reason = getattr(exc, "reason", exc)  # urllib's URLError wraps what the socket raised
    if why is None:
        why = (f"no answer in {DOWNLOAD_TIMEOUT:g} s" if isinstance(reason, TimeoutError)
               else f"{type(exc).__name__}: {one_line(exc)}")
    return ConfigError(f"{what} are downloaded once, on first use, into {cache} (needs internet), and cannot be "
                       f"downloaded now ({why}); {online}, or {fix}")
