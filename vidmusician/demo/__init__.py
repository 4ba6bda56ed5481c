"""``vidmusician demo``: a web page that scores a video (Gradio).

:class:`Scorer` holds the models and runs one job (video in; video with
music, WAV and alignment plot out); :func:`build_app` is the page over it;
:func:`write_examples` draws the example clips. Gradio is imported only by
:func:`build_app`.
"""

from .app import build_app
from .examples import write_examples
from .scoring import DEFAULT_MAX_DURATION, Cancelled, LoadedModels, ScoreRequest, ScoreResult, Scorer

__all__ = ["DEFAULT_MAX_DURATION", "Cancelled", "LoadedModels", "ScoreRequest", "ScoreResult", "Scorer", "build_app",
           "write_examples"]
