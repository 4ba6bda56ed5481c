"""`vidmusician demo`'s page in this process: the scoring behind it, Cancel, closing, odd uploads and failures."""

from __future__ import annotations

import dataclasses
import errno
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from demo_clip import CLIP_SECONDS, FLASHES
from demo_clip import clip  # noqa: F401  (a pytest fixture)
from media import flash_video, write_audio

from vidmusician.errors import VidMusicianError
from vidmusician.video.reader import probe


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    from vidmusician.demo import Scorer

    s = Scorer(backbone="tiny", encoder="tiny", device="cpu", max_duration=10,
               workdir=tmp_path_factory.mktemp("demo"))
    yield s
    s.close()


def _jobs(scorer) -> list[Path]:
    return [p for p in scorer.workdir.iterdir() if p.is_dir()]


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
