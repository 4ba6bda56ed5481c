"""The old name of :mod:`vidmusician.testing.random_backbones`: the same module object, so that
``from vidmusician.random_backbones import ...`` (and a test's ``monkeypatch.setattr`` on it) keeps working."""

import sys

from .testing import random_backbones as _module

sys.modules[__name__] = _module
