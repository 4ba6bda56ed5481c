"""A SIGTERM that a library turns into an error of its own still stops the command as SIGTERM does.

A signal lands between any two Python steps, also inside a library's call back into Python: there
the :class:`~vidmusician.training.launch.Terminated` it raises can come out as that library's error
(in safetensors' ``get_tensor``, torch's "ValueError: could not determine the shape of object type
'torch.storage.UntypedStorage'", seen when a run of two processes was stopped). That must give the
stop's one line and status, not a traceback, and never mark a video as bad.
"""

from __future__ import annotations

import os
import signal

import pytest

from vidmusician import cli
from vidmusician.errors import VideoError

LIBRARY_ERROR = "could not determine the shape of object type 'torch.storage.UntypedStorage'"


def signalled_inside_a_library(error=ValueError):
    """SIGTERM to this process, arriving inside a call that turns what the handler raised into ``error``."""
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # the handler runs at the next Python step
            pass
    except BaseException:
        raise error(LIBRARY_ERROR) from None


def test_the_cli_says_the_stop_of_a_sigterm_a_library_made_an_error_of(monkeypatch, capsys):
    monkeypatch.setattr("vidmusician.cli.commands.info.run", lambda args: signalled_inside_a_library())
    assert cli.main(["info", "adapter"]) == 143
    assert capsys.readouterr().err == "vidmusician info: stopped by SIGTERM\n"


def test_a_bug_without_a_signal_is_not_taken_for_a_stop(monkeypatch):
    def bug(args):
        raise ValueError(LIBRARY_ERROR)

    monkeypatch.setattr("vidmusician.cli.commands.info.run", bug)
    with pytest.raises(ValueError, match="could not determine the shape"):
        cli.main(["info", "adapter"])


def test_training_says_where_to_resume_after_such_a_stop(monkeypatch, tmp_path, capsys):
    import argparse

    import vidmusician.training.train as train

    monkeypatch.setattr(train, "_train", lambda args, progress, program: signalled_inside_a_library())
    args = argparse.Namespace(output=str(tmp_path / "run"))
    assert train.run(args, "vidmusician train") == 143
    err = capsys.readouterr().err
    assert err.startswith("vidmusician train: interrupted") and "Traceback" not in err, err


def test_a_video_is_not_listed_as_bad_for_such_a_stop(monkeypatch, tmp_path, capsys):
    """prepare and generate of several videos list a video whose error is the video's: one that a
    SIGTERM caused is the run's stop, and the video is done again on the next run."""
    from media import flash_video
    from test_data import noise_track

    import vidmusician.training.prepare as prepare

    src = tmp_path / "videos"
    src.mkdir()
    flash_video(src / "a.mp4", [0.5], 2.0, audio=noise_track(2.0, 0))
    monkeypatch.setattr(prepare, "process_source",
                        lambda *args, **kwargs: signalled_inside_a_library(VideoError))
    assert cli.main(["prepare", str(src), str(tmp_path / "data"), "--backbone", "tiny", "--encoder", "tiny",
                     "--window", "1", "--hop", "1"]) == 143
    err = capsys.readouterr().err
    assert "vidmusician prepare: stopped by SIGTERM" in err and "Traceback" not in err, err
    assert not (tmp_path / "data" / "errors.jsonl").exists() or not (tmp_path / "data" / "errors.jsonl").read_text()


def test_generate_of_several_videos_stops_and_lists_no_video_for_such_a_stop(monkeypatch, tmp_path, capsys):
    from media import flash_video

    for name in ("a.mp4", "b.mp4"):
        flash_video(tmp_path / name, [0.5], 1.0)
    # (Patched where it is looked up at each call: a module that imports it by name at import would keep the patch.)
    monkeypatch.setattr("vidmusician.muxing.check_muxable",
                        lambda *args, **kwargs: signalled_inside_a_library(VideoError))
    assert cli.main(["generate", str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4"), "-o", str(tmp_path / "out") + "/",
                     "--backbone", "tiny", "--encoder", "tiny"]) == 143
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "vidmusician generate: stopped by SIGTERM" and "failed" not in err, err


def test_the_scope_raises_the_stop_and_forgets_the_signal_once_it_ends():
    from vidmusician.training.launch import Terminated, stop_on_sigterm, stopped_by_sigterm

    with pytest.raises(Terminated):
        with stop_on_sigterm():
            signalled_inside_a_library()
    assert not stopped_by_sigterm(ValueError(LIBRARY_ERROR))  # a later error is that error
    with pytest.raises(ValueError):
        with stop_on_sigterm():
            raise ValueError(LIBRARY_ERROR)


def test_a_checkpoint_read_a_sigterm_broke_is_no_damaged_checkpoint(monkeypatch, tmp_path, capsys):
    """resume passes over a damaged checkpoint to the one before: one whose read a SIGTERM broke
    (the library's error made a DataError) stops the run there, and is not called damaged."""
    import vidmusician.training.train_state as train_state
    from vidmusician.errors import DataError
    from vidmusician.training.launch import Terminated, stop_on_sigterm

    for step in ("step-00000010", "step-00000020"):
        (tmp_path / "checkpoints" / step).mkdir(parents=True)
    monkeypatch.setattr(train_state, "read_checkpoint", lambda path: signalled_inside_a_library(DataError))
    with pytest.raises(Terminated):
        with stop_on_sigterm():
            train_state.resume(tmp_path, None, None, None, None)
    assert "trying the checkpoint before it" not in capsys.readouterr().out


def test_a_stop_swallowed_on_the_way_is_the_stop_when_the_scope_ends():
    from vidmusician.training.launch import Terminated, stop_on_sigterm

    with pytest.raises(Terminated):
        with stop_on_sigterm():
            try:
                signalled_inside_a_library()
            except ValueError:  # taken for an error of its own, and passed over
                pass


def test_a_scope_in_another_thread_leaves_the_signals_to_the_main_thread():
    import threading

    from vidmusician.training import launch

    def elsewhere():
        with launch.stop_on_sigterm():
            pass

    launch._sigterm["received"] = True  # a signal the main thread's scope has seen
    try:
        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join()
        assert launch._sigterm["received"]
    finally:
        launch._sigterm["received"] = False
