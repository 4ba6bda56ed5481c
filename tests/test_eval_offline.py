"""`vidmusician eval` without a network: encoder weights that cannot be had are one line at once, with the fixes.

The README's offline check makes music without an adapter, so its files record no
visual encoder and `eval` turns to the default, ViT-B-32:openai, whose weights
download on first use. huggingface_hub retries a failed connection for about half
a minute per file; the check before the load asks the Hub once.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from media import flash_video, write_audio
from vidmusician.audio_io import read_tags

ROOT = Path(__file__).resolve().parent.parent


class CountingServer:
    """A TCP port that accepts connections, counts them and closes them (a Hub that never answers).

    ``hold``: keeps them open instead, never answering (a proxy or a network that drops everything).
    """

    def __init__(self, hold: bool = False):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.connections, self.hold, self.held = 0, hold, []
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            if self.hold:
                self.held.append(conn)
            else:
                conn.close()

    def close(self):
        for conn in self.held:
            conn.close()
        self.sock.close()


@pytest.fixture
def clip_without_adapter(tmp_path):
    """A video and music as `generate` writes it without an adapter (no encoder recorded)."""
    (tmp_path / "v").mkdir()
    (tmp_path / "g").mkdir()
    flash_video(tmp_path / "v" / "clip.mp4", [0.5, 1.5], 2.0)
    write_audio(tmp_path / "g" / "clip.wav", np.zeros(64000, dtype=np.float32))
    assert "encoder" not in read_tags(tmp_path / "g" / "clip.wav")
    return tmp_path


def _eval(folder: Path, env: dict, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HOME=str(folder / "hf"), **env)  # an empty Hugging Face cache
    env.pop("HF_HUB_CACHE", None)
    if env.get("HF_HUB_OFFLINE") is None:
        env.pop("HF_HUB_OFFLINE", None)
    cmd = [sys.executable, "-m", "vidmusician", "eval", "--videos", str(folder / "v"), "--generated",
           str(folder / "g"), "--plot", str(folder / "plots"), "--quiet", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env={k: v for k, v in env.items() if v is not None},
                          timeout=300)


def _one_line_with_the_fixes(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    line = lines[0]
    assert line.startswith("vidmusician eval: error: ") and "ViT-B-32:openai" in line, line
    assert "made without an adapter" in line and "--encoder" in line and "--visual-source flow" in line, line
    return line


def test_unreachable_hub_is_asked_once(clip_without_adapter):
    hub = CountingServer()
    try:
        out = _eval(clip_without_adapter, {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": None})
    finally:
        hub.close()
    line = _one_line_with_the_fixes(out)
    assert "cannot be reached" in line and "HF_HUB_OFFLINE=1" in line, line
    assert hub.connections == 1, hub.connections  # the probe; no download retries
    assert not (clip_without_adapter / "plots").exists()


def test_offline_asks_the_hub_nothing(clip_without_adapter):
    hub = CountingServer()
    try:
        out = _eval(clip_without_adapter, {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "1"})
    finally:
        hub.close()
    assert "HF_HUB_OFFLINE is set" in _one_line_with_the_fixes(out)
    assert hub.connections == 0


def test_cached_weights_need_no_hub():
    """Weights in the cache (under open_clip's safetensors name) pass the check with the Hub unreachable."""
    code = r"""
import os, sys
from pathlib import Path
cache = Path(os.environ["HF_HOME"]) / "hub" / "models--timm--vit_base_patch32_clip_224.openai"
(cache / "refs").mkdir(parents=True)
(cache / "refs" / "main").write_text("abc")
(cache / "snapshots" / "abc").mkdir(parents=True)
(cache / "snapshots" / "abc" / "open_clip_model.safetensors").write_bytes(b"")
from vidmusician.video.encoder_weights import check_weights_available
check_weights_available("ViT-B-32:openai")
print("ok")
"""
    import tempfile

    with tempfile.TemporaryDirectory() as home:
        env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HOME=home, HF_HUB_OFFLINE="1")
        env.pop("HF_HUB_CACHE", None)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr


def test_every_command_that_loads_an_encoder_refuses_missing_weights_at_once(tmp_path, monkeypatch):
    """generate, features, prepare and the demo load encoders through `load_encoder`: offline without
    the weights cached, it refuses in one line before any download is tried."""
    from huggingface_hub import constants

    from vidmusician.errors import ConfigError
    from vidmusician.video.encoders import load_encoder

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty cache
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError) as err:
        load_encoder("ViT-B-32:openai", device="cpu")
    message = str(err.value)
    assert "\n" not in message and "not in the Hugging Face cache" in message and "--encoder" in message


def _closed_port_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there: every connection is refused
    return f"http://127.0.0.1:{port}"


def metrics_env(tmp_path: Path, proxy: str, offline: bool = False) -> dict:
    """An `eval`'s environment: an empty torch hub cache, downloads through ``proxy``; online (the
    download is tried) or with HF_HUB_OFFLINE=1."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), TORCH_HOME=str(tmp_path / "torch"), https_proxy=proxy,
               HTTPS_PROXY=proxy, http_proxy=proxy, HTTP_PROXY=proxy)
    for key in ("no_proxy", "NO_PROXY", "HF_HUB_OFFLINE"):
        env.pop(key, None)
    return dict(env, HF_HUB_OFFLINE="1") if offline else env


def metrics_argv(folder: Path, option: list[str]) -> list[str]:
    """`vidmusician eval` of the clip against itself with the audio metric ``option``."""
    return ["eval", "--videos", str(folder / "v"), "--generated", str(folder / "g"), "--reference",
            str(folder / "v"), "--encoder", "tiny", "--quiet", *option]


def said_in_one_line(out: subprocess.CompletedProcess, *needles: str) -> None:
    """`eval` stopped with exit status 2 and one error line holding every needle."""
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vidmusician eval: error: "), out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("option, names", [
    (["--kl"], ("PaSST", "hear21passt", "leave out --kl")),
    (["--embedder", "vggish"], ("VGGish", "torchvggish", "--vggish-weights FILE")),
])
def test_weights_of_the_audio_metrics_offline_are_one_line(clip_without_adapter, tmp_path, option, names):
    """PaSST (--kl) and VGGish download their weights into the torch hub cache on first use: with an
    empty cache and no way out, one line naming the model and saying that the download needs internet."""
    proxy = _closed_port_url()  # downloads go through a proxy that refuses them, network or not
    cmd = [sys.executable, "-m", "vidmusician", *metrics_argv(clip_without_adapter, option)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=metrics_env(tmp_path, proxy), timeout=300)
    said_in_one_line(out, *names, "downloaded once, on first use", "needs internet", str(tmp_path / "torch"))


@pytest.mark.parametrize("option, names", [
    (["--kl"], ("PaSST", "hear21passt", "put a copy of https://", ".pt into that folder", "leave out --kl")),
    (["--embedder", "vggish"], ("VGGish", "torchvggish", "--vggish-weights FILE, a copy of https://")),
])
def test_a_download_that_gets_no_answer_ends_in_one_line(clip_without_adapter, tmp_path, option, names):
    """A network that never answers: the weights' download gives up (here after 1 s) and says what it
    was fetching and how to provide it without the network, instead of waiting for good."""
    proxy = CountingServer(hold=True)
    env, argv = metrics_env(tmp_path, proxy.url), metrics_argv(clip_without_adapter, option)
    code = ("import sys\nimport vidmusician.evaluation.downloads as downloads\ndownloads.DOWNLOAD_TIMEOUT = 1.0\n"
            f"from vidmusician.cli import main\nsys.exit(main({argv!r}))\n")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=90)
    finally:
        proxy.close()
    said_in_one_line(out, *names, "no answer in 1 s", "needs internet", str(tmp_path / "torch"))


@pytest.mark.parametrize("option, names", [
    (["--kl"], ("PaSST", "hear21passt", "put a copy of https://", "leave out --kl")),
    (["--embedder", "vggish"], ("VGGish", "torchvggish", "--vggish-weights FILE, a copy of https://")),
])
def test_offline_the_audio_metrics_weights_not_in_the_cache_are_refused_asking_nothing(clip_without_adapter, tmp_path,
                                                                                      option, names):
    """HF_HUB_OFFLINE=1 and an empty torch hub cache: one line at once, naming the weights, where they go and
    how to fetch them once online; no request (a proxy counts them) and no "Downloading" line first."""
    proxy = CountingServer()
    cmd = [sys.executable, "-m", "vidmusician", *metrics_argv(clip_without_adapter, option)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=metrics_env(tmp_path, proxy.url, offline=True),
                             timeout=300)
    finally:
        proxy.close()
    said_in_one_line(out, *names, "HF_HUB_OFFLINE is set", "once online without HF_HUB_OFFLINE",
                     str(tmp_path / "torch"))
    assert proxy.connections == 0


def test_a_server_whose_name_never_resolves_is_given_up_in_bounded_time(tmp_path, monkeypatch):
    """The socket timeout does not bound a name lookup: the check before the download bounds it all."""
    import time

    from vidmusician.errors import ConfigError
    from vidmusician.evaluation import downloads

    released = threading.Event()
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: released.wait(60) and [])
    monkeypatch.setattr(downloads, "DOWNLOAD_TIMEOUT", 0.5)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)  # online: the server is asked
    for key in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(key, raising=False)
    outcome = []

    def check():
        try:
            downloads.check_download("X's weights", "https://example.invalid/x.pth", "pass --x FILE")
        except ConfigError as exc:
            outcome.append(str(exc))

    start = time.monotonic()
    thread = threading.Thread(target=check, daemon=True)
    thread.start()
    thread.join(20)
    released.set()
    assert outcome and time.monotonic() - start < 10, "the check waited on the name lookup"
    assert "no answer in 0.5 s" in outcome[0] and "pass --x FILE" in outcome[0], outcome[0]
