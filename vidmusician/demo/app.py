"""The Gradio page of ``vidmusician demo``: drop a video, get it back with music.

One :class:`~vidmusician.demo.scoring.Scorer` (models loaded once) serves every
visitor; Gradio's queue runs their jobs one at a time and hands each visitor
its own results. Element ids (``#video-in``, ``#run``, ``#status``, ...) are the
page's stable handles, for tests and for scripts that drive it.
"""


import math
import threading
from pathlib import Path

from ..checks import MAX_GUIDANCE
from ..errors import VidMusicianError, one_line, printable
from .scoring import Cancelled, ScoreRequest, Scorer

__all__ = ["build_app"]

_INTRO = """# vidmusician: music for a video
Drop a video (or pick an example), optionally describe the music, and press **Score**.
You get the video with the music as its soundtrack, the music as WAV, and the
video's visual beats above the music's onsets on one time axis, with the
beat-alignment score (the `vidmusician eval --plot` figure)."""


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

    def run(video, text, duration, seed, top_k, temperature, text_cfg, video_cfg, request: gr.Request,
            progress=gr.Progress(track_tqdm=True)):
        if not video:
            return None, None, None, "Drop a video first.", None
        progress(0, desc="reading the video")
        cancel = jobs.start(request.session_hash)
        try:
            result = scorer.score(ScoreRequest(
                video=video, text=(text or "").strip() or None, duration=_blank_is_none(duration) or None,
                seed=None if _blank_is_none(seed) is None else int(seed), top_k=int(top_k),
                temperature=float(temperature), text_cfg=float(text_cfg), video_cfg=float(video_cfg)), cancel)
        except Cancelled:
            return None, None, None, "Cancelled.", None
        except VidMusicianError as exc:
            # The visitor knows the file by its name, not by the server's copy of it.
            message = one_line(exc).replace(printable(video), printable(Path(video).name))
            return None, None, None, f"**Error:** {message}", None
        finally:
            jobs.finish(request.session_hash, cancel)
        score = "n/a (no beats to compare)" if math.isnan(result.beat_alignment) else f"{result.beat_alignment:.3f}"
        status = f"Done: {result.duration:.2f} s of music. Beat alignment: **{score}**"
        return str(result.video), str(result.wav), str(result.plot), status, str(result.folder)

    def cancel(request: gr.Request):
        jobs.cancel(request.session_hash)
        return "Cancelled."

    def forget(folder):
        # Gradio has copied the files into its own cache by now: the job folder can go.
        if folder:
            scorer.discard(folder)
        return None

    with gr.Blocks(title="vidmusician", analytics_enabled=False) as app:
        gr.Markdown(_INTRO)
        with gr.Row():
            with gr.Column():
                video = gr.Video(label="Video", sources=["upload"], height=280, elem_id="video-in")
                text = gr.Textbox(label="Text prompt", placeholder="lo-fi, piano (optional)", elem_id="text")
                with gr.Row():
                    duration = gr.Number(label="Duration (s)", value=0, minimum=0,
                                         info="0: the video's length", elem_id="duration")
                    seed = gr.Number(label="Seed", value=0, precision=0, info="empty: random", elem_id="seed")
                with gr.Accordion("Sampling and guidance", open=False):
                    top_k = gr.Slider(0, 1000, value=250, step=1, label="Top-k", elem_id="top-k")
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
                    cancel_button = gr.Button("Cancel", variant="stop", elem_id="cancel")
            with gr.Column():
                status = gr.Markdown(elem_id="status")
                out_video = gr.Video(label="Video with music", interactive=False, height=280, elem_id="out-video")
                out_wav = gr.File(label="Music (WAV)", interactive=False, elem_id="out-wav")
        # Full width: the figure is wide (one time axis, legends on the right).
        out_plot = gr.Image(label="Visual beats (top) and music onsets (bottom)", type="filepath",
                            interactive=False, elem_id="out-plot")
        if examples:
            gr.Examples(examples, inputs=[video, text], label="Examples (synthetic clips)")
        folder = gr.State(None)
        job = run_button.click(
            run, inputs=[video, text, duration, seed, top_k, temperature, text_cfg, video_cfg],
            outputs=[out_video, out_wav, out_plot, status, folder], concurrency_limit=1)
        job.then(forget, inputs=folder, outputs=folder)
        cancel_button.click(cancel, outputs=status, cancels=[job], queue=False)
    # One job at a time shares the model; the others wait in the queue, each with its own results.
    app.queue(default_concurrency_limit=1)
    return app


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

    def finish(self, session: str, flag: threading.Event) -> None:
        with self._lock:
            if self._flags.get(session) is flag:
                del self._flags[session]

    def cancel(self, session: str) -> None:
        with self._lock:
            flag = self._flags.get(session)
        if flag is not None:
            flag.set()


def _blank_is_none(value):
    """Gradio gives an emptied Number field as None (or NaN): that means "the default"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value
