"""The clip the demo's tests score: ``CLIP_SECONDS`` of video that flashes at ``FLASHES``.

Use from a test module (``tests/`` is on ``sys.path``)::

    from demo_clip import clip  # noqa: F401  (a pytest fixture)
"""

from __future__ import annotations

import pytest
from media import flash_video

FLASHES = [0.4, 1.2, 2.0]
CLIP_SECONDS = 2.4


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return flash_video(tmp_path_factory.mktemp("media") / "clip.mp4", FLASHES, duration=CLIP_SECONDS)
