"""The tests' name for :mod:`vidmusician.testing.media` (``from media import flash_video``; pytest
puts ``tests/`` on ``sys.path``): the same module object."""

import sys

from vidmusician.testing import media as _module

sys.modules[__name__] = _module
