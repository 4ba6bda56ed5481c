"""What a Hugging Face repository id looks like, whether the Hub answers, and offline mode for a
block when it does not.

When nothing answers, ``huggingface_hub`` retries each download for ~25 s (with a
warning line each time) before it falls back to the cache; one plain request first
tells that case apart, so cached files load at once and uncached ones fail in one line.
The request's own timeout does not cover name resolution (``getaddrinfo``) and some
proxies hold a connection open, so the whole request is bounded in wall time.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading

__all__ = ["REPO_ID", "BUILT_BACKBONES", "is_repo_id", "is_local_name", "hub_unreachable", "no_answer", "offline_mode", "offline_set"]

# A Hugging Face repository id: 'org/name' (adapters and backbones by id; an adapter id may
# add '@revision' after it).
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def is_repo_id(name: str) -> bool:
    """Whether ``name`` has the form of a repository id (``org/name``, no ``..``: that is a path)."""
    return REPO_ID.fullmatch(name) is not None and ".." not in name


# Backbones built by name (vidmusician.backbones.load_backbone), which every vidmusician install has:
# neither a folder nor a Hub id.
BUILT_BACKBONES = ("tiny", "tiny-t5", "tiny-learned", "random-small", "random-medium", "random-large")


def is_local_name(name: str) -> bool:
    """Whether a backbone ``name`` means a folder: it exists, or it cannot be a repository id ('org/name')."""
    return os.path.exists(name) or not is_repo_id(name)


def hub_unreachable(repo: str, filename: str, revision: str | None = None) -> bool:
    """Whether the Hub cannot be reached for ``repo``'s ``filename`` (False when offline mode is set).

    One plain request: when nothing answers, ``hf_hub_download`` retries for ~25 s (with
    a warning each time) before it falls back to the cache. An answer, even an error (no
    such repository, gated, ...), means the Hub is there.
    """
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return not constants.HF_HUB_OFFLINE and no_answer(repo, filename, revision)
    except HfHubHTTPError:
        return False


# Seconds a request to the Hub may take in all before it counts as no answer; None means
# twice huggingface_hub's HF_HUB_ETAG_TIMEOUT (10 s unless set), which it puts on the same request's
# connection and on its reading, each: a slow Hub that answers within those bounds still counts.
PROBE_SECONDS: float | None = None


def no_answer(repo: str, filename: str, revision: str | None) -> bool:
    """True when a plain request for the file gets no answer within :data:`PROBE_SECONDS`; an
    error answer is raised."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    outcome: list = []  # what the request ended in: False (an answer), True (none) or the error answer

    def probe() -> None:
        try:
            get_hf_file_metadata(hf_hub_url(repo, filename, revision=revision))
            outcome.append(False)
        except HfHubHTTPError as exc:
            outcome.append(exc)
        except Exception:  # noqa: BLE001 - any failure to reach the Hub
            outcome.append(True)

    # A daemon thread: one still waiting on a name lookup or a silent proxy is left behind
    # without keeping the interpreter from exiting.
    thread = threading.Thread(target=probe, name="vidmusician-hub-probe", daemon=True)
    thread.start()
    thread.join(PROBE_SECONDS if PROBE_SECONDS is not None else 2 * constants.HF_HUB_ETAG_TIMEOUT)
    if not outcome:
        return True
    if isinstance(outcome[0], HfHubHTTPError):
        raise outcome[0]
    return outcome[0]


_FORCED: list = []  # the offline_mode blocks running that turned offline mode on


def offline_set() -> bool:
    """Whether the user set offline mode (HF_HUB_OFFLINE), not :func:`offline_mode` for an unreachable Hub."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) and not _FORCED


@contextlib.contextmanager
def offline_mode(enabled: bool = True):
    """Runs the block with huggingface_hub (and transformers, which asks it) in offline mode: files
    come from the cache at once, without the retries of a Hub that does not answer."""
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    forced = enabled and not previous
    constants.HF_HUB_OFFLINE = previous or enabled
    if forced:
        _FORCED.append(True)
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous
        if forced:
            _FORCED.pop()
