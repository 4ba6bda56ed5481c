"""`vidmusician demo`: the scoring behind the page, and the page driven by a real browser."""

from __future__ import annotations

import dataclasses
import errno
import io
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import takes_ctrl_c
from media import flash_video, write_audio

from vidmusician import cli
from vidmusician.errors import VidMusicianError
from vidmusician.video.reader import probe

FLASHES = [0.4, 1.2, 2.0]
CLIP_SECONDS = 2.4


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return flash_video(tmp_path_factory.mktemp("media") / "clip.mp4", FLASHES, duration=CLIP_SECONDS)


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    from vidmusician.demo import Scorer

    s = Scorer(backbone="tiny", encoder="tiny", device="cpu", max_duration=10,
               workdir=tmp_path_factory.mktemp("demo"))
    yield s
    s.close()


def _jobs(scorer) -> list[Path]:
    return [p for p in scorer.workdir.iterdir() if p.is_dir()]


# --------------------------------------------------------------------------- #
# Scoring (no browser)


def test_the_top_k_slider_ends_at_the_backbones_tokens_per_codebook(scorer):
    """A visitor cannot pick a top-k the model refuses (tiny's codebooks hold 400 tokens)."""
    from vidmusician.demo.app import build_app

    app = build_app(scorer)
    (slider,) = [b for b in app.blocks.values() if getattr(b, "elem_id", None) == "top-k"]
    assert (slider.maximum, slider.value) == (scorer.musicgen.lm.card, 250) == (400, 250)


def test_score_gives_video_wav_and_plot_of_the_video_length(scorer, clip):
    from vidmusician.demo import ScoreRequest

    result = scorer.score(ScoreRequest(str(clip), text="piano", seed=3))
    assert result.folder.parent == scorer.workdir
    wav, sr = sf.read(result.wav)
    assert sr == 32000 and len(wav) == round(probe(clip).duration * sr)
    muxed = probe(result.video)
    assert muxed.has_audio and abs(muxed.duration - CLIP_SECONDS) < 0.05
    assert result.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 0 <= result.beat_alignment <= 1
    # The features were computed once: the plot's visual rhythm read the cached ones.
    assert len(list((result.folder / "features").rglob("*.safetensors"))) == 1
    scorer.discard(result.folder)
    assert not result.folder.exists()


def test_same_seed_same_music(scorer, clip, capsys):
    from vidmusician.demo import ScoreRequest

    # No seed: a random one is drawn and recorded, so the music can be made again.
    a = scorer.score(ScoreRequest(str(clip), seed=None, duration=1.0))
    b = scorer.score(ScoreRequest(str(clip), seed=a.seed, duration=1.0))
    assert isinstance(a.seed, int) and b.seed == a.seed
    # tqdm bars over the sampling steps: what the page's gr.Progress(track_tqdm=True) follows.
    assert "step" in capsys.readouterr().err
    assert a.wav.read_bytes() == b.wav.read_bytes() and a.folder != b.folder
    assert len(sf.read(a.wav)[0]) == 32000  # the duration asked for, not the video's
    for r in (a, b):
        scorer.discard(r.folder)


def test_two_visitors_at_once_get_their_own_results(scorer, clip):
    from vidmusician.demo import ScoreRequest

    asks = {"a": 0.4, "b": 0.8}
    results, errors = {}, []

    def visit(name):
        try:
            results[name] = scorer.score(ScoreRequest(str(clip), seed=1, duration=asks[name]))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=visit, args=(name,)) for name in asks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and set(results) == set(asks)
    for name, seconds in asks.items():
        assert len(sf.read(results[name].wav)[0]) == round(seconds * 32000)
        scorer.discard(results[name].folder)


def test_guidance_and_sampling_reach_the_model(scorer, clip):
    from vidmusician.demo import ScoreRequest

    seen = []
    handle = scorer.vm.lm.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    try:
        result = scorer.score(ScoreRequest(str(clip), text="piano", seed=1, duration=0.2, text_cfg=3.0,
                                           video_cfg=1.0, top_k=7, temperature=0.5))
    finally:
        handle.remove()
    params = scorer.vm.generation_params
    assert (params.top_k, params.temperature, params.text_cfg_coef, params.video_cfg_coef) == (7, 0.5, 3.0, 1.0)
    assert set(seen) == {3}  # t != v: three branches, [text+video; text; null]
    scorer.discard(result.folder)


def _not_a_video(tmp):
    path = tmp / "notes.mp4"
    path.write_text("these are not frames\n")
    return path, {}


def _audio_only(tmp):
    return write_audio(tmp / "song.mp4", np.zeros(32000, dtype=np.float32)), {}


def _too_long(tmp):
    return flash_video(tmp / "long.mp4", [1.0], duration=11.0), {}


def _too_long_for_any_duration(tmp):  # its whole length would be read and encoded
    return flash_video(tmp / "long.mp4", [1.0], duration=11.0), {"duration": 1.0}


def _duration_too_long(tmp):
    return flash_video(tmp / "short.mp4", [0.5], duration=1.0), {"duration": 60.0}


@pytest.mark.parametrize("make, match", [
    (_not_a_video, "notes.mp4"),
    (_audio_only, "song.mp4"),
    (_too_long, "limit of 10 s"),
    (_too_long_for_any_duration, "the video is 11.0 s, longer than this page's limit of 10 s"),
    (_duration_too_long, "duration asked for is 60.0 s"),
])
def test_bad_input_is_one_line_and_leaves_nothing(scorer, tmp_path, make, match):
    from vidmusician.demo import ScoreRequest

    video, kwargs = make(tmp_path)
    before = _jobs(scorer)
    with pytest.raises(VidMusicianError, match=match) as info:
        scorer.score(ScoreRequest(str(video), **kwargs))
    assert "\n" not in str(info.value)
    assert _jobs(scorer) == before


def test_cancel_stops_generation_on_the_fast_engine_and_leaves_nothing(scorer, clip, monkeypatch):
    from vidmusician.demo import Cancelled, ScoreRequest
    from vidmusician.generation.engine import DecodeEngine

    cancel = threading.Event()
    steps = []
    sample_window = DecodeEngine.sample_window

    def press_cancel_at_step_3(self, *args, callback, **kwargs):
        def step():
            steps.append(len(scorer.vm.lm._forward_pre_hooks))
            if len(steps) == 3:
                cancel.set()
            callback()

        return sample_window(self, *args, callback=step, **kwargs)

    # Steps of the engine only: a job that fell back to the reference path would count none.
    monkeypatch.setattr(DecodeEngine, "sample_window", press_cancel_at_step_3)
    with pytest.raises(Cancelled):
        scorer.score(ScoreRequest(str(clip), seed=0), cancel)
    assert steps == [0, 0, 0]  # stopped at the step the flag was set, not at the end (~60 steps); no hook on the LM
    assert _jobs(scorer) == []
    monkeypatch.undo()
    # The model is free again.
    scorer.discard(scorer.score(ScoreRequest(str(clip), seed=0, duration=0.2)).folder)


def test_closing_stops_the_running_job_at_its_next_step_and_refuses_new_ones(clip, tmp_path, monkeypatch):
    """A server stopped mid-job (Ctrl+C, SIGTERM) must not leave the generation running in its worker thread."""
    from vidmusician.demo import Cancelled, ScoreRequest, Scorer
    from vidmusician.generation.engine import DecodeEngine

    scorer = Scorer(backbone="tiny", encoder="tiny", device="cpu", max_duration=10)
    steps, started, outcome = [], threading.Event(), []
    sample_window = DecodeEngine.sample_window

    def count(self, *args, callback, **kwargs):
        def step():
            steps.append(1)
            started.set()
            time.sleep(0.01)
            callback()

        return sample_window(self, *args, callback=step, **kwargs)

    monkeypatch.setattr(DecodeEngine, "sample_window", count)

    def job():
        try:
            scorer.score(ScoreRequest(str(clip), seed=0))
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=job)
    worker.start()
    assert started.wait(60)
    scorer.close()
    worker.join(5)
    assert not worker.is_alive() and len(outcome) == 1 and isinstance(outcome[0], Cancelled)
    assert len(steps) < 50 and not scorer.workdir.exists()  # of ~100 steps; the folder went after the job
    with pytest.raises(Cancelled):
        scorer.score(ScoreRequest(str(clip), seed=0))


def test_cancel_during_feature_extraction_stops_before_generation(scorer, clip, monkeypatch):
    from vidmusician.demo import Cancelled, ScoreRequest

    cancel = threading.Event()
    features = scorer._features
    monkeypatch.setattr(scorer, "_features", lambda *a: cancel.set() or features(*a))
    monkeypatch.setattr(scorer.vm, "generate", lambda *a, **k: pytest.fail("generation started after Cancel"))
    with pytest.raises(Cancelled):
        scorer.score(ScoreRequest(str(clip), seed=0), cancel)
    assert _jobs(scorer) == []


class _Visitor:
    """One visitor's clicks on the page, as Gradio calls its handlers: Score (begin, run, end)."""

    SETTINGS = dict(text="", duration=0.2, seed="1", top_k=250, temperature=1.0, text_cfg=3.0, video_cfg=3.0)

    def __init__(self, scorer):
        from types import SimpleNamespace

        from vidmusician.demo import build_app

        self.handlers = {f.name: f.fn for f in build_app(scorer).fns.values()}
        self.request = SimpleNamespace(session_hash="visitor")

    def score(self, video) -> tuple:
        """What run shows: (video, audio, WAV, plot, status, job folder); end has run after it."""
        self.handlers["begin"](self.request)
        shown = self.handlers["run"](str(video), *self.SETTINGS.values(), self.request)
        self.handlers["end"](shown[-1])
        return shown


# The byte at the cut: a character's first (ascii, cjk), inside a 2-byte one, inside a 3-byte one.
@pytest.mark.parametrize("stem", ["v" * 225, "音" * 75, "v" + "é" * 110, "vv" + "音" * 74],
                         ids=["ascii", "cjk", "inside-2-bytes", "inside-3-bytes"])
def test_a_long_upload_name_is_cut_for_the_results_and_still_recognisable(scorer, clip, tmp_path, stem):
    """Every name the job writes (and its writer's hidden ".<name>.PID.TID.part") fits 255 bytes."""
    from vidmusician.demo import ScoreRequest

    video = tmp_path / f"{stem}.mp4"
    video.write_bytes(clip.read_bytes())
    result = scorer.score(ScoreRequest(str(video), seed=0, duration=0.2))
    names = [p.name for p in (result.video, result.wav, result.plot)]
    assert all(p.is_file() for p in (result.video, result.wav, result.plot))
    assert max(len(name.encode()) for name in names) + 40 <= 255, names
    kept = result.wav.name.removesuffix("_music.wav")  # cut between characters, the start of the name kept
    assert stem.startswith(kept) and 100 <= len(kept.encode()) <= 120, kept
    assert names == [f"{kept}_scored.mp4", f"{kept}_music.wav", f"{kept}_alignment.png"]
    scorer.discard(result.folder)


def test_a_short_upload_name_is_kept_whole(scorer, clip, tmp_path):
    from vidmusician.demo import ScoreRequest

    video = tmp_path / ("音" * 40 + ".mp4")  # 120 bytes
    video.write_bytes(clip.read_bytes())
    result = scorer.score(ScoreRequest(str(video), seed=0, duration=0.2))
    assert result.wav.name == "音" * 40 + "_music.wav"
    scorer.discard(result.folder)


def _out_of_memory(scorer, monkeypatch):
    def generate(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB.\nGPU 0 has a total capacity of 79 GiB")

    monkeypatch.setattr(scorer.vm, "generate", generate)
    return "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB."


def _disk_full_while_muxing(scorer, monkeypatch):  # the WAV is written by then
    def mux(video, wav, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(scorer, "_mux", mux)
    return "OSError: clip_scored.mp4: the disk is full"  # the file by its name, not the server's folders


def _bug_after_the_job(scorer, monkeypatch):  # the job's files are all written
    score = scorer.score
    monkeypatch.setattr(scorer, "score", lambda *a: dataclasses.replace(score(*a), beat_alignment="n/a"))
    return "TypeError: "


@pytest.mark.parametrize("fail", [_out_of_memory, _disk_full_while_muxing, _bug_after_the_job])
def test_an_unexpected_failure_is_one_line_leaves_nothing_and_the_page_goes_on(scorer, clip, fail, monkeypatch,
                                                                              capsys):
    visitor = _Visitor(scorer)
    said = fail(scorer, monkeypatch)
    *results, status, folder = visitor.score(clip)
    assert results == [None] * 4 and folder is None
    assert status.startswith(f"**Failed:** {said}") and "\n" not in status, status
    assert _jobs(scorer) == []
    # The operator's record: the demo's line, then the whole traceback.
    err = capsys.readouterr().err
    assert "vidmusician demo: a job on clip.mp4 failed:\nTraceback (most recent call last):" in err, err
    kind = said.split(":")[0]
    assert f"\n{kind}: " in err.split("Traceback", 1)[1], err  # the exception, as Python prints it
    monkeypatch.undo()
    *results, status, folder = visitor.score(clip)
    assert status.startswith("Done") and Path(results[1]).name == "clip_music.wav"
    assert _jobs(scorer) == []  # served and removed by end


def test_a_webm_comes_back_as_mkv_and_the_page_says_how_to_get_it(scorer, tmp_path):
    from vidmusician.testing.media import moving_square, write_video

    webm = write_video(tmp_path / "clip.webm", moving_square(10), 25, codec="libvpx")  # VP8: no place in .mp4
    visitor = _Visitor(scorer)
    video, *_, status, _ = visitor.score(webm)
    assert Path(video).suffix == ".mkv" and status.startswith("Done")
    assert "comes back as .mkv" in status and "download it with the player's download button" in status
    clip = flash_video(tmp_path / "clip.mp4", FLASHES, duration=CLIP_SECONDS)
    assert ".mkv" not in visitor.score(clip)[-2]


def test_cancel_button_flags_only_its_own_session():
    from vidmusician.demo.app import _Jobs

    jobs = _Jobs()
    mine, theirs = jobs.start("me"), jobs.start("them")
    assert jobs.cancel("me")
    assert mine.is_set() and not theirs.is_set()
    assert jobs.flag("me") is None and jobs.flag("them") is theirs  # a cancelled job waiting in the queue won't run
    jobs.finish("me", mine)
    again = jobs.start("me")
    jobs.finish("me", mine)  # a late finish of the old job keeps the new job's flag
    assert jobs.cancel("me") and again.is_set()
    # Nothing running (finished, or never started): Cancel reports it, so the page leaves the results alone.
    jobs.finish("them", theirs)
    assert not jobs.cancel("them") and not theirs.is_set()
    assert not jobs.cancel("nobody")


def test_page_names_the_models_and_warns_of_random_stand_ins(scorer):
    from vidmusician.demo import LoadedModels
    from vidmusician.demo.app import _describe
    from vidmusician.demo.scoring import _random_encoder

    assert scorer.models == LoadedModels(backbone="tiny", adapter=None, stage=None, encoder="tiny",
                                         random_backbone=True, random_encoder=True)
    text = _describe(scorer.models)
    assert "backbone `tiny`" in text and "adapter none" in text and "encoder `tiny`" in text
    assert "random stand-in: it makes noise, not music" in text
    real = _describe(LoadedModels(backbone="facebook/musicgen-small", adapter="adapters/mine", stage=2,
                                  encoder="ViT-B-32:openai", random_backbone=False, random_encoder=False))
    assert "`facebook/musicgen-small`" in real and "`adapters/mine` (stage 2)" in real
    assert "random" not in real and "noise" not in real
    assert _random_encoder("ViT-B-32") and not _random_encoder("ViT-B-32:openai")  # no tag: random weights


def test_the_pages_copies_do_not_pile_up_and_its_chain_has_no_api(scorer):
    from vidmusician.demo import build_app

    app = build_app(scorer)
    assert app.delete_cache == (600, 3600)  # Gradio deletes its files an hour old, every 10 minutes
    # The page's chain has no API of its own: `run` called alone found no job and kept its folder.
    chain = {f.name: f.api_visibility for f in app.fns.values() if f.name in ("begin", "run", "end", "cancel")}
    assert chain == dict.fromkeys(("begin", "run", "end", "cancel"), "private")


@pytest.mark.parametrize("text, seed", [("", None), ("  ", None), (None, None), ("12", 12), (" 7 ", 7)])
def test_seed_field_empty_means_random(text, seed):
    from vidmusician.demo.app import _seed

    assert _seed(text) == seed


@pytest.mark.parametrize("text", ["abc", "1.5", "-1", str(2 ** 63)])
def test_seed_field_not_a_seed_is_one_line(text):
    from vidmusician.demo.app import _seed

    with pytest.raises(VidMusicianError, match="Seed: .* is not a whole number from 0 to") as info:
        _seed(text)
    assert "\n" not in str(info.value)


def test_cli_adapter_for_another_backbone_is_one_line(tmp_path, capsys):
    from conftest import tiny_config
    from vidmusician.random_backbones import tiny_musicgen
    from vidmusician.model import attach_adapters

    musicgen = tiny_musicgen(dim=64)
    attach_adapters(musicgen, tiny_config(musicgen)).save_pretrained(tmp_path / "adapter")
    rc = cli.main(["demo", "--adapter", str(tmp_path / "adapter"), "--backbone", "tiny", "--port", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "does not match" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, match", [
    (["--port", "0"], "--port"),
    (["--max-duration", "0"], "--max-duration"),
])
def test_cli_bad_option_is_one_line(argv, match, capsys):
    assert cli.main(["demo", "--backbone", "tiny", "--encoder", "tiny", *argv]) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1


def test_cli_port_in_use_is_one_line_before_loading_anything(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # A backbone that cannot load: the port is checked first.
        rc = cli.main(["demo", "--backbone", "/nonexistent", "--port", str(port)])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip() == f"vidmusician demo: error: --port {port}: already in use on 127.0.0.1; " \
                                      f"pick another port"


def test_cli_host_not_of_this_machine_is_one_line(capsys):
    assert cli.main(["demo", "--backbone", "/nonexistent", "--host", "192.0.2.1", "--port", "8999"]) == 2
    err = capsys.readouterr().err
    assert "--host 192.0.2.1 --port 8999: cannot listen there" in err and len(err.strip().splitlines()) == 1


def test_cli_without_gradio_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if it were not installed
    assert cli.main(["demo", "--backbone", "tiny", "--encoder", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "needs gradio" in err and "vidmusician[demo]" in err and len(err.strip().splitlines()) == 1


def test_examples_have_visual_beats(tmp_path):
    from vidmusician.demo import write_examples
    from vidmusician.demo.examples import EXAMPLES

    rows = write_examples(tmp_path)
    assert [Path(v).name for v, _ in rows] == [f"{stem}.mp4" for stem, *_ in EXAMPLES]
    from vidmusician.evaluation.beats import visual_rhythm

    stem, bpm, seconds, _ = EXAMPLES[1]
    info = probe(rows[1][0])
    assert abs(info.duration - seconds) < 0.05
    beats = visual_rhythm(rows[1][0], encoder="tiny").beats
    # The square jumps every 60 / bpm seconds; the visual beats are those jumps.
    expected = np.arange(1, int(seconds * bpm / 60)) * 60 / bpm
    assert len(beats) >= len(expected) - 2, (beats, expected)  # peak picking may skip one near an edge
    assert np.abs(beats[:, None] - expected[None, :]).min(axis=1).max() < 0.05, (beats, expected)


# --------------------------------------------------------------------------- #
# The page in a real browser

try:
    from selenium.webdriver.common.by import By
except ImportError:  # the browser test is skipped without selenium
    By = None

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
HAS_BROWSER = By is not None and os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)
# Headless Chromium that never reaches past this machine: no background
# networking, updates, sync or QUIC, and a profile of its own.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,1560")
PAGE_TIMEOUT = 240  # seconds; a slow, shared 2-core machine
PROGRESS = r"/\d+\/[\d.]+k? step/"  # tqdm's count as Gradio shows it: "44/1.8k step"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """``vidmusician demo --backbone tiny --encoder tiny`` on a free local port, with its own TMPDIR."""

    def __init__(self, folder: Path):
        self.tmp = folder / "tmp"
        self.tmp.mkdir()
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}/"
        self.log_path = folder / "server.log"
        self._log = open(self.log_path, "w")
        env = dict(os.environ, TMPDIR=str(self.tmp))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vidmusician", "demo", "--backbone", "tiny", "--encoder", "tiny", "--device", "cpu",
             "--port", str(port), "--max-duration", "120"],
            cwd=folder, env=env, stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=takes_ctrl_c)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + PAGE_TIMEOUT
        while True:
            assert self.proc.poll() is None, self.log_path.read_text()
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, "the demo did not start: " + self.log_path.read_text()
            time.sleep(0.5)

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """SIGTERM, as `kill` stops it (or ``signum``); the demo removes its folder on the way out."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def server(tmp_path):
    s = _Server(tmp_path)
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path, prefix='chromium-')}")
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(PAGE_TIMEOUT)
    driver.out_dir = tmp_path  # where a timed-out wait leaves its screenshot
    yield driver
    driver.quit()


def _wait(driver, script: str, what: str):
    """Polls ``script`` in the page until it returns something truthy."""
    from selenium.webdriver.support.ui import WebDriverWait

    from selenium.common.exceptions import TimeoutException

    try:
        return WebDriverWait(driver, PAGE_TIMEOUT, poll_frequency=0.25).until(lambda d: d.execute_script(script))
    except TimeoutException:
        shot = Path(driver.out_dir) / "timeout.png"
        driver.save_screenshot(str(shot))
        text = driver.execute_script("return document.body.innerText")
        raise AssertionError(f"waited {PAGE_TIMEOUT} s for {what}; page in {shot}:\n{text}") from None


def _upload(driver, path: Path):
    clear = driver.find_elements(By.CSS_SELECTOR, "#video-in button[aria-label='Clear']")
    if clear:
        clear[0].click()
    _wait(driver, "return document.querySelector('#video-in input[type=file]')", "the upload field")
    driver.find_element(By.CSS_SELECTOR, "#video-in input[type=file]").send_keys(str(path))
    # Until the player shows this file: the previous upload's player may still be there.
    _wait(driver, f"var v = document.querySelector('#video-in video'); "
                  f"return v && v.src.endsWith('/' + {path.name!r})", f"{path.name} in the player")


def _set_duration(driver, seconds: float) -> None:
    field = driver.find_element(By.CSS_SELECTOR, "#duration input")
    field.clear()
    field.send_keys(str(seconds))


def _score(driver, expect: str) -> str:
    driver.find_element(By.CSS_SELECTOR, "#run").click()
    return _wait(driver, f"var t = document.querySelector('#status').innerText; "
                         f"return t.includes({expect!r}) && t", f"'{expect}' in the status")


def _check_results(driver, seconds: float) -> bytes:
    """The scored video, the music player and the plot are on the page; returns the WAV's bytes."""
    duration = _wait(driver, "var v = document.querySelector('#out-video video'); "
                             "return v && v.readyState >= 1 && isFinite(v.duration) && v.duration",
                     "the scored video to load")
    assert abs(duration - seconds) < 0.1
    # The music as the browser's own player, its duration read by the browser from the served file.
    duration = _wait(driver, "var a = document.querySelector('#out-audio audio[controls]'); "
                             "return a && a.src && a.readyState >= 1 && isFinite(a.duration) && a.duration",
                     "the music player to load")
    assert abs(duration - seconds) < 0.05
    src = driver.execute_script("return document.querySelector('#out-audio audio[controls]').src")
    with urllib.request.urlopen(src, timeout=60) as r:
        assert r.headers.get_content_type().startswith("audio/"), r.headers.get_content_type()
        played = r.read()
    width = _wait(driver, "var i = document.querySelector('#out-plot img'); "
                          "return i && i.complete && i.naturalWidth", "the plot image")
    assert width > 300
    href = _wait(driver, "var a = document.querySelector('#out-wav a[href]'); return a && a.href", "the WAV link")
    with urllib.request.urlopen(href, timeout=60) as r:
        data = r.read()
    assert played == data  # the player plays the WAV offered for download
    with sf.SoundFile(io.BytesIO(data)) as f:
        assert f.samplerate == 32000 and abs(f.frames / f.samplerate - seconds) < 0.05
    return data


def _seed_shown(status: str) -> int:
    found = re.search(r"\bseed (\d+)\b", status)
    assert found, status
    return int(found.group(1))


def _press_disabled_cancel(driver) -> None:
    """Clicks Cancel as if it were enabled (a click that raced the job's end), and waits for the server's answer."""
    # The page's own record of its requests (emptied first: it keeps only the first 250).
    driver.execute_script("performance.clearResourceTimings(); "
                          "var b = document.querySelector('#cancel'); b.disabled = false; b.click();")
    _wait(driver, "return performance.getEntriesByType('resource')"
                  ".some(e => e.name.includes('/run/predict') && e.responseEnd > 0)", "the server's answer to Cancel")
    time.sleep(0.5)  # the page applies the answer


@pytest.mark.browser
@pytest.mark.skipif(not HAS_BROWSER,
                    reason="needs selenium, and Debian's chromium and chromium-driver (make setup installs them)")
def test_page_scores_a_video_in_a_browser(server, browser, clip, tmp_path):
    browser.get(server.url)
    seconds = probe(clip).duration

    # What runs the page, and a plain warning that the tiny stand-in makes noise.
    models = _wait(browser, "var m = document.querySelector('#models'); return m && m.innerText", "the models line")
    assert "backbone tiny" in models and "adapter none" in models and "visual encoder tiny" in models, models
    assert "random stand-in: it makes noise, not music" in models, models
    # Seed empty (random) by default; Cancel off while no job runs.
    seed = _wait(browser, "var s = document.querySelector('#seed input'); return s && [s.value]", "the seed field")
    assert seed == [""], seed
    assert browser.execute_script("return document.querySelector('#cancel').disabled")

    _upload(browser, clip)
    status = _score(browser, "Done")
    first_seed = _seed_shown(status)  # the random seed drawn, shown to repeat the music
    # The score, with what it means beside it.
    assert "Beat alignment" in status and "0 to 1, higher is better" in status
    assert "music's beats fall to the video's visual beats" in status
    assert browser.execute_script("return document.querySelector('#status a[href*=\"Bailando\"]') !== null")
    first_wav = _check_results(browser, seconds)
    _wait(browser, "return document.querySelector('#cancel').disabled", "Cancel to go off after the job")
    # A Cancel that arrives after the job finished changes nothing.
    _press_disabled_cancel(browser)
    assert browser.execute_script("return document.querySelector('#status').innerText") == status
    assert _check_results(browser, seconds) == first_wav
    browser.save_screenshot(str(tmp_path / "demo_page.png"))
    print(f"screenshot: {tmp_path / 'demo_page.png'}")

    fake = tmp_path / "notes.mp4"
    fake.write_text("these are not frames\n")
    _upload(browser, fake)
    status = _score(browser, "Error")
    # One line naming the file as the visitor knows it (not the server's copy).
    assert status.strip().startswith("Error: notes.mp4: not a readable video") and len(status.splitlines()) == 1

    # A long job: one progress bar over the sampling steps, then Cancel stops it.
    _upload(browser, clip)
    _set_duration(browser, 100)  # thousands of steps: time to press Cancel
    browser.find_element(By.CSS_SELECTOR, "#run").click()
    _wait(browser, f"return {PROGRESS}.test(document.body.innerText)", "progress in steps")
    bars = browser.execute_script(f"return Array.from(document.querySelectorAll('[data-testid=status-tracker]'))"
                                  f".filter(e => {PROGRESS}.test(e.innerText)).length")
    assert bars == 1
    browser.find_element(By.CSS_SELECTOR, "#cancel").click()
    _wait(browser, "return document.querySelector('#status').innerText.includes('Cancelled')", "'Cancelled'")
    _wait(browser, f"return !{PROGRESS}.test(document.body.innerText)", "the progress to go")
    _wait(browser, "return document.querySelector('#cancel').disabled", "Cancel to go off after cancelling")
    # No other job's results beside "Cancelled.".
    assert browser.execute_script("return document.querySelector('#out-video video, #out-wav a[href]') === null")

    _set_duration(browser, 0)  # the server still serves; the seed shown makes the same music
    seed = browser.find_element(By.CSS_SELECTOR, "#seed input")
    seed.send_keys(str(first_seed))
    assert _seed_shown(_score(browser, "Done")) == first_seed
    assert _check_results(browser, seconds) == first_wav

    (folder,) = server.tmp.glob("vidmusician-demo-*")
    assert sorted(p.name for p in folder.iterdir()) == ["examples", "gradio"]  # job folders went once served

    # SIGTERM while a long job runs: the job stops at its next step, the server exits as every
    # command does (143: 128 + 15), with the CLI's line last, and the job's folder goes with the rest.
    _set_duration(browser, 120)
    browser.find_element(By.CSS_SELECTOR, "#run").click()
    _wait(browser, f"return {PROGRESS}.test(document.body.innerText)", "progress in steps")
    assert len(list(folder.iterdir())) == 3  # the running job's folder beside examples and gradio
    started = time.monotonic()
    assert server.stop() == 143
    stopping = time.monotonic() - started
    assert stopping < 20, stopping  # about 8 s here, not the rest of the job's 6,000 steps
    # The CLI's own two lines and nothing else (no gradio or uvicorn report of the stop).
    lines = server.log_path.read_text().splitlines()
    assert len(lines) == 2 and lines[0].startswith("vidmusician demo: serving on "), lines
    assert lines[1] == "vidmusician demo: stopped by SIGTERM", lines
    assert not folder.exists()  # the job's folder and the rest, on exit


@pytest.mark.parametrize("signum, status, line", [(signal.SIGTERM, 143, "stopped by SIGTERM"),
                                                  (signal.SIGINT, 130, "interrupted")])
def test_a_stopped_server_says_so_in_one_line_of_its_own(tmp_path, signum, status, line, request):
    """`kill` or Ctrl+C: the exit status every command gives, and the CLI's line, not gradio's."""
    # The browser test ends by stopping its server so, mid-job: a server started only for this is needed
    # where that test cannot run or is not selected.
    if signum == signal.SIGTERM and HAS_BROWSER and any(
            item.originalname == "test_page_scores_a_video_in_a_browser" for item in request.session.items):
        pytest.skip("the browser test stops its server with SIGTERM, mid-job")
    s = _Server(tmp_path)
    try:
        s.wait_ready()
    finally:
        rc = s.stop(signum)
    lines = s.log_path.read_text().splitlines()
    assert rc == status and lines[-1] == f"vidmusician demo: {line}", lines
    assert len(lines) == 2 and lines[0].startswith("vidmusician demo: serving on "), lines
