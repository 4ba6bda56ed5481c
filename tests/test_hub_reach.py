"""Whether the Hub answers: one request, bounded in wall time."""

from __future__ import annotations

import threading
import time

import pytest

import vidmusician.hub_reach as hub_reach


@pytest.fixture
def hub(monkeypatch):
    """Sets what a request for a Hub file does; online mode, a short bound."""
    import huggingface_hub
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_reach, "PROBE_SECONDS", 1.0)
    return lambda request: monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", request)


def test_a_request_that_hangs_counts_as_no_answer_within_the_bound(hub):
    """A name lookup or proxy that never returns (the request's own timeout does not cover it)."""
    released = threading.Event()
    hub(lambda url, **kwargs: released.wait(20))
    try:
        start = time.monotonic()
        assert hub_reach.hub_unreachable("someone/model", "config.json") is True
        assert time.monotonic() - start < 8
        probe = next(t for t in threading.enumerate() if t.name == "vidmusician-hub-probe")
        assert probe.daemon  # left waiting, it does not hold the interpreter's exit
    finally:
        released.set()


def test_an_error_answer_or_an_answer_means_the_hub_is_there(hub):
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    def refuse(url, **kwargs):
        raise RepositoryNotFoundError("404", response=httpx2.Response(404, request=httpx2.Request("HEAD", url)))

    hub(refuse)
    assert hub_reach.hub_unreachable("someone/model", "config.json") is False
    with pytest.raises(HfHubHTTPError):  # hub.py turns the answer into its one line
        hub_reach.no_answer("someone/model", "config.json", None)
    hub(lambda url, **kwargs: object())
    assert hub_reach.hub_unreachable("someone/model", "config.json") is False


def test_a_request_that_fails_to_connect_is_no_answer(hub):
    def fail(url, **kwargs):
        raise ConnectionError("name or service not known")

    hub(fail)
    assert hub_reach.hub_unreachable("someone/model", "config.json") is True
