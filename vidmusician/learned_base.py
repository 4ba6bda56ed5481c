"""The old name of :mod:`vidmusician.testing.learned_base`: the same module object, so that
``from vidmusician.learned_base import ...`` (and a test's ``monkeypatch.setattr`` on it) keeps working."""

import sys

from .testing import learned_base as _module

sys.modules[__name__] = _module
