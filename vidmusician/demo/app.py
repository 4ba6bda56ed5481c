"""The Gradio page of ``vidmusician demo``: drop a video, get it back with music.

One :class:`~vidmusician.demo.scoring.Scorer` (models loaded once) serves every
visitor; Gradio's queue runs their jobs one at a time and hands each visitor
its own results. Element ids (``#video-in``, ``#run``, ``#status``, ...) are the
page's stable handles, for tests and for scripts that drive it.
"""


import math
import re
import sys
import threading
import traceback
from pathlib import Path

from ..checks import MAX_GUIDANCE
from ..errors import ConfigError, VidMusicianError, one_line, printable
from ..evaluation.metrics import DEFAULT_BA_SIGMA
from .scoring import Cancelled, LoadedModels, ScoreRequest, Scorer

__all__ = ["build_app"]

_INTRO = """# vidmusician: music for a video
Drop a video (or pick an example), optionally describe the music, and press **Score**.
You get the video with the music as its soundtrack, the music to play and as WAV, and
the video's visual beats above the music's onsets on one time axis, with the
beat-alignment score (the `vidmusician eval --plot` figure)."""

# Beside the score: what it measures, its range and direction, and where it is defined.
# (every, older than) seconds: Gradio's copies of uploads and results an hour old go, checked every 10 minutes.
GRADIO_CACHE_SWEEP = (600, 3600)
_SCORE_HELP = ("how close the music's beats fall to the video's visual beats: 0 to 1, higher is better "
               "([Bailando](https://github.com/lisiyao21/Bailando)'s score, the mean over music beats of "
               "exp(-d²/2σ²), d the distance to the nearest visual beat, σ = {sigma:g} s; "
               "`vidmusician eval` in the README)")

# The video stream is copied, never re-encoded: one that an .mp4 cannot hold (VP8 from a
# .webm) comes back as .mkv, which some browsers' <video> does not play.
_MKV_NOTE = ("The video comes back as .mkv (its video stream, copied as it is, has no place in an .mp4): "
             "if the player stays blank, download it with the player's download button; the Music player "
             "plays the music alone.")


def build_app(scorer: Scorer, examples: list[list] | None = None):
    """The page, as a Gradio Blocks bound to ``scorer``.

    Args:
        scorer: the loaded models.
        examples: ``[[video, text], ...]`` offered under the inputs.

    Returns:
        The ``gr.Blocks``, its queue set up (launch it).
    """
    import gradio as gr

    jobs = _Jobs()
    idle = (gr.Button(interactive=True), gr.Button(interactive=False))  # (Score, Cancel) with no job running
    busy = (gr.Button(interactive=False), gr.Button(interactive=True))

    def note(message):  # a status with no results: (video, audio, WAV, plot, status, job folder)
        return None, None, None, None, message, None

    def begin(request: gr.Request):
        # The flag exists from the click on, so Cancel also reaches a job still waiting in the queue;
        # the previous results go, so a status is never shown beside another job's files.
        jobs.start(request.session_hash)
        return *note("Scoring... (Cancel stops it)")[:-1], *busy

    def run(video, text, duration, seed, top_k, temperature, text_cfg, video_cfg, request: gr.Request,
            progress=gr.Progress(track_tqdm=True)):
        cancel = jobs.flag(request.session_hash)
        if cancel is None:  # cancelled while it waited
            return note("Cancelled.")
        result = None
        try:
            if not video:
                return note("Drop a video first.")
            progress(0, desc="reading the video")
            result = scorer.score(ScoreRequest(
                video=video, text=(text or "").strip() or None, duration=_blank_is_none(duration) or None,
                seed=_seed(seed), top_k=int(top_k),
                temperature=float(temperature), text_cfg=float(text_cfg), video_cfg=float(video_cfg)), cancel)
            return str(result.video), str(result.wav), str(result.wav), str(result.plot), done(result), \
                str(result.folder)
        except Cancelled:
            return note("Cancelled.")
        except VidMusicianError as exc:
            return note(f"**Error:** {_as_visitor_knows(one_line(exc), video, scorer.workdir)}")
        except Exception as exc:
            # Anything else (out of GPU memory, a full disk, a bug): this job ends in one line,
            # and the server goes on serving; the traceback is the operator's, on stderr.
            if result is not None:
                scorer.discard(result.folder)
            _log_failure(video, exc)
            return note(f"**Failed:** {type(exc).__name__}: {_as_visitor_knows(one_line(exc), video, scorer.workdir)}")
        finally:
            jobs.finish(request.session_hash, cancel)

    def done(result) -> str:
        score = "n/a (no beats to compare)" if math.isnan(result.beat_alignment) else f"{result.beat_alignment:.3f}"
        status = (f"Done: {result.duration:.2f} s of music, seed {result.seed} (type it in Seed for the same music)."
                  f"\n\nBeat alignment: **{score}**, {score_help}")
        if result.video.suffix == ".mkv":
            status += f"\n\n{_MKV_NOTE}"
        return status

    def end(folder):
        # Gradio has copied the files into its own cache by now: the job folder can go.
        if folder:
            scorer.discard(folder)
        return None, *idle

    def cancel(request: gr.Request):
        if not jobs.cancel(request.session_hash):
            # No job of this visitor runs (it finished as Cancel was pressed): the results stay as they are.
            return gr.skip(), gr.skip(), gr.skip()
        return "Cancelled.", *idle

    score_help = _SCORE_HELP.format(sigma=DEFAULT_BA_SIGMA)
    # Gradio keeps its own copy of every upload and result until the server stops: older ones go.
    with gr.Blocks(title="vidmusician", analytics_enabled=False, delete_cache=GRADIO_CACHE_SWEEP) as app:
        gr.Markdown(_INTRO)
        gr.Markdown(_describe(scorer.models), elem_id="models")
        with gr.Row():
            with gr.Column():
                video = gr.Video(label="Video", sources=["upload"], height=280, elem_id="video-in")
                text = gr.Textbox(label="Text prompt", placeholder="lo-fi, piano (optional)", elem_id="text")
                with gr.Row():
                    duration = gr.Number(label="Duration (s)", value=0, minimum=0,
                                         info="0: the video's length", elem_id="duration")
                    # A text field: Gradio's Number shows 0 when empty, and 0 is a seed, not "random".
                    seed = gr.Textbox(label="Seed", placeholder="random", max_lines=1,
                                      info="empty: random (the result shows the seed used)", elem_id="seed")
                with gr.Accordion("Sampling and guidance", open=False):
                    card = scorer.musicgen.lm.card  # top-k is at most the tokens per codebook
                    top_k = gr.Slider(0, min(1000, card), value=min(250, card), step=1, label="Top-k",
                                      elem_id="top-k")
                    temperature = gr.Slider(0.05, 2.0, value=1.0, step=0.05, label="Temperature",
                                            elem_id="temperature")
                    text_cfg = gr.Slider(0, MAX_GUIDANCE, value=3.0, step=0.25, label="Text guidance",
                                         info="how strongly the text steers the music", elem_id="text-cfg")
                    video_cfg = gr.Slider(0, MAX_GUIDANCE, value=3.0, step=0.25, label="Video guidance",
                                          info="how strongly the video steers it on top of the text (0: ignore "
                                               "the video); different from the text's: about 1.5x the time",
                                          elem_id="video-cfg")
                with gr.Row():
                    run_button = gr.Button("Score", variant="primary", elem_id="run")
                    # Only a running job can be cancelled: off until Score is pressed.
                    cancel_button = gr.Button("Cancel", variant="stop", interactive=False, elem_id="cancel")
            with gr.Column():
                status = gr.Markdown(elem_id="status")
                out_video = gr.Video(label="Video with music", interactive=False, height=280, elem_id="out-video")
                # The browser's own <audio controls> player rather than Gradio's waveform.
                out_audio = gr.Audio(label="Music", type="filepath", interactive=False, elem_id="out-audio",
                                     waveform_options=gr.WaveformOptions(show_recording_waveform=False))
                out_wav = gr.File(label="Music (WAV)", interactive=False, elem_id="out-wav")
        # Full width: the figure is wide (one time axis, legends on the right).
        out_plot = gr.Image(label="Visual beats (top) and music onsets (bottom)", type="filepath",
                            interactive=False, elem_id="out-plot")
        if examples:
            gr.Examples(examples, inputs=[video, text], label="Examples (synthetic clips)")
        folder = gr.State(None)
        results = [out_video, out_audio, out_wav, out_plot, status]
        # The page's own chain (begin -> run -> end, and Cancel): no API of its own, where a call
        # to `run` alone would find no job to run and leave its folder behind.
        private = dict(api_visibility="private")
        job = run_button.click(begin, outputs=[*results, run_button, cancel_button], queue=False, **private).then(
            run, inputs=[video, text, duration, seed, top_k, temperature, text_cfg, video_cfg],
            outputs=[*results, folder], concurrency_limit=1,
            # One progress bar, over the first result, rather than one in every output box.
            show_progress_on=out_video, **private)
        job.then(end, inputs=folder, outputs=[folder, run_button, cancel_button], **private)
        cancel_button.click(cancel, outputs=[status, run_button, cancel_button], cancels=[job], queue=False,
                            **private)
    # One job at a time shares the model; the others wait in the queue, each with its own results.
    app.queue(default_concurrency_limit=1)
    return app


def _describe(models: LoadedModels) -> str:
    """The page's line on what is loaded, with a plain warning when a stand-in makes noise."""
    adapter = ("none: fresh adapters, which leave the backbone's music unchanged" if models.adapter is None
               else f"`{models.adapter}` (stage {models.stage})")
    text = f"**Loaded:** backbone `{models.backbone}`; adapter {adapter}; visual encoder `{models.encoder}`."
    if models.random_backbone:
        text += (f"\n\n**`{models.backbone}` is a random stand-in: it makes noise, not music.** It checks the "
                 f"installation; for music, start the demo with a real backbone (`--backbone "
                 f"facebook/musicgen-small`) and a trained `--adapter`.")
    if models.random_encoder:
        text += f" The encoder `{models.encoder}` has random weights: its visual beats are not a real model's."
    return text


class _Jobs:
    """The cancel flag of each visitor's running job (by Gradio session)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._flags: dict[str, threading.Event] = {}

    def start(self, session: str) -> threading.Event:
        flag = threading.Event()
        with self._lock:
            self._flags[session] = flag
        return flag

    def flag(self, session: str) -> threading.Event | None:
        """The session's job flag; None once the job was cancelled (or finished)."""
        with self._lock:
            return self._flags.get(session)

    def finish(self, session: str, flag: threading.Event) -> None:
        with self._lock:
            if self._flags.get(session) is flag:
                del self._flags[session]

    def cancel(self, session: str) -> bool:
        """Stops the session's job; False (and nothing happens) when it has none."""
        with self._lock:
            flag = self._flags.pop(session, None)
        if flag is None:
            return False
        flag.set()
        return True


def _as_visitor_knows(message: str, video, workdir: Path) -> str:
    """``message`` naming files by their names: the upload as the visitor knows it, not the server's
    copy, and a job's file without the server's folders."""
    message = message.replace(printable(video), printable(Path(video).name))
    return re.sub(re.escape(printable(workdir)) + r"/[0-9a-f]{32}/", "", message)


def _log_failure(video, exc: Exception) -> None:
    """The operator's record of a job that failed unexpectedly: the demo's line on stderr, then the traceback."""
    trace = "".join(traceback.format_exception(exc))
    print(f"vidmusician demo: a job on {printable(Path(video).name)} failed:\n{trace}", end="", file=sys.stderr,
          flush=True)


def _blank_is_none(value):
    """Gradio gives an emptied Number field as None (or NaN): that means "the default"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


_MAX_SEED = 2 ** 63


def _seed(text) -> int | None:
    """The Seed field: empty means random (None), else a whole number."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        seed = int(text)
    except ValueError:
        seed = -1
    if not 0 <= seed < _MAX_SEED:  # torch's seeds are 64-bit
        raise ConfigError(f"Seed: {text!r} is not a whole number from 0 to {_MAX_SEED - 1}; type one, "
                          f"or leave it empty for a random seed")
    return seed
