"""The last step of `make setup`: import the stack, and warm the caches every later run reads.

- Bytecode: uv installs no ``.pyc`` files, and where ``PYTHONDONTWRITEBYTECODE`` is set (as on
  CI machines) nothing would ever write them, so every test's subprocess would compile torch
  again. Importing the modules that commands use writes them once (``make setup`` runs this
  script with the variable unset).
- librosa's numba caches: processes that compile the same ``guvectorize`` function at the
  same moment can leave a cache whose two halves come from different processes, which
  crashes every later process that loads it (numba issue 10128). Compiling them here, in one
  process, before anything runs in parallel, avoids that.
"""
import numpy as np

import vidmusician  # first: it quiets xformers' banner about its missing C++ ops
import accelerate  # noqa: F401
import audiocraft.models  # noqa: F401
import decord  # noqa: F401
import open_clip  # noqa: F401
import peft  # noqa: F401
import transformers.models.t5  # noqa: F401

import vidmusician.cli  # noqa: F401
import vidmusician.evaluation.evaluate  # noqa: F401
import vidmusician.model  # noqa: F401
import vidmusician.pipeline  # noqa: F401
import vidmusician.training.prepare  # noqa: F401
import vidmusician.training.train  # noqa: F401
from vidmusician.evaluation.beats import music_rhythm

for dtype in (np.float32, np.float64):
    music_rhythm(np.random.default_rng(0).standard_normal(32000 * 2).astype(dtype))
print("setup: ok, vidmusician", vidmusician.__version__, "from", vidmusician.__path__[0])
