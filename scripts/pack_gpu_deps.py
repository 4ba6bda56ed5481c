"""Packs the Python packages a bare GPU machine lacks into ``.whl/``, to travel with the working tree.

The GPU machines this project borrows have torch (and torch's own dependencies) but
not audiocraft's pure-Python stack, and cannot download anything. ``benchmarks/gpu.sh``
installs from ``.whl/`` whatever the machine cannot import. This script fills it from
this checkout's ``.venv`` (the exact versions the tests ran with): one wheel per
distribution that the GPU run imports, rebuilt from the distribution's installed files
(a wheel is those files, laid out as in site-packages, with its ``.dist-info``; the
RECORD is written afresh for the files packed). Installing one is unzipping it onto
``sys.path``, which needs no pip.

What is packed, in this order, while the total stays under ``--limit-mib`` (the
working tree travels in 64 MiB with it):

1. every pure-Python distribution the run imports (audiocraft, transformers, open_clip,
   peft, accelerate, omegaconf, einops, ...);
2. binary ones whose compiled part is optional or tied to no Python version (xformers,
   whose C++ ops audiocraft does not need; PyYAML, which falls back to Python);
3. small binary ones built for this Python (safetensors, tokenizers, regex, psutil,
   soundfile, ...), usable where the GPU machine runs the same Python minor version;
4. torchaudio and torchvision (audiocraft and open_clip import them), for this torch.

Not packed: torch and its dependencies (the machine has them), numpy, scipy, PyAV and
decord (34 and 13 MiB: they do not fit; audiocraft imports PyAV, so gpu.sh stubs it
where it is missing, and skips the dataset preparation benchmark, which needs both),
spacy and librosa (audiocraft imports them for a tokenizer and a chroma MusicGen's text
models do not use; librosa needs numba: stubbed too), optional imports of what is packed,
and this project (it travels as the working tree).

    .venv/bin/python scripts/pack_gpu_deps.py [--out .whl] [--limit-mib 56]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib
import importlib.metadata as md
import re
import shutil
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# What benchmarks/gpu.sh runs imports: the tests, the three benchmarks, the package's modules they load.
MODULES = ["pytest", "vidmusician.model", "vidmusician.generation.windows", "vidmusician.training.train",
           "vidmusician.training.prepare", "vidmusician.video.encoders", "vidmusician.video.features",
           "vidmusician.backbones", "vidmusician.cli", "vidmusician.audio_io", "vidmusician.muxing",
           "audiocraft.models.musicgen", "audiocraft.models.builders", "open_clip", "accelerate", "peft"]
# On the machine already (torch's wheel brings them), or this project itself.
ON_DEVICE = re.compile(r"^(torch|triton|sympy|mpmath|networkx|jinja2|markupsafe|filelock|fsspec|"
                       r"typing[-_]extensions|setuptools|pip|numpy|scipy|nvidia-.*|cuda-.*|vidmusician)$", re.I)
NOT_PACKED = re.compile(r"^(av|decord|spacy|thinc|blis|cymem|preshed|murmurhash|srsly|wasabi|weasel|confection|catalogue|"
                        r"llvmlite|numba|matplotlib|fonttools|kiwisolver|librosa|soxr|tensorboard|"
                        # optional imports of what is packed (syntax colours, compression, async, proxies, timm's models)
                        r"brotli|trio|outcome|sortedcontainers|pysocks|timm)$", re.I)
OPTIONAL_BINARY = {"xformers", "pyyaml"}
# Built for one torch (the machine's may be another), but audiocraft and open_clip import them.
TORCH_COMPANIONS = {"torchaudio", "torchvision"}


def needed_distributions() -> list[md.Distribution]:
    """The installed distributions whose top-level modules the GPU run imports."""
    for name in MODULES:
        importlib.import_module(name)
    top = {name.split(".")[0] for name in sys.modules}
    owners = md.packages_distributions()
    names = sorted({d for t in top for d in owners.get(t, [])}, key=str.lower)
    return [md.distribution(n) for n in names if not ON_DEVICE.match(n) and not NOT_PACKED.match(n)]


def is_binary(dist: md.Distribution) -> bool:
    return any(str(f).endswith((".so", ".pyd")) or ".so." in str(f) for f in dist.files or [])


def rank(dist: md.Distribution) -> int:
    """Packing order: pure, optional binary, small binary, torch's companions."""
    name = dist.metadata["Name"].lower()
    if name in TORCH_COMPANIONS:
        return 3
    if not is_binary(dist):
        return 0
    return 1 if name in OPTIONAL_BINARY else 2


def build_wheel(dist: md.Distribution, out: Path) -> Path:
    """A wheel of an installed distribution: its files under site-packages and a fresh RECORD."""
    tag = next(line.split(": ", 1)[1] for line in dist.read_text("WHEEL").splitlines() if line.startswith("Tag:"))
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    path = out / f"{name}-{dist.version}-{tag}.whl"
    files = [f for f in dist.files if not str(f).startswith("..") and "__pycache__" not in str(f)
             and not str(f).endswith((".pyc", "RECORD", "INSTALLER", "REQUESTED", "direct_url.json"))]
    info = next(str(f).split("/")[0] for f in dist.files if str(f).split("/")[0].endswith(".dist-info"))
    record = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for f in files:
            data = Path(f.locate()).read_bytes()
            z.writestr(str(f), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{f},sha256={digest},{len(data)}")
        record.append(f"{info}/RECORD,,")
        z.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / ".whl"), help="the folder (default: .whl, ignored by git)")
    parser.add_argument("--limit-mib", type=float, default=56.0,
                        help="most MiB of wheels (the working tree and carried paths travel in 64 MiB)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    total, packed, left = 0, [], []
    for dist in sorted(needed_distributions(), key=lambda d: (rank(d), d.metadata["Name"].lower())):
        wheel = build_wheel(dist, out)
        size = wheel.stat().st_size
        if total + size > args.limit_mib * 2 ** 20:
            wheel.unlink()
            left.append(f"{dist.metadata['Name']} ({size / 2 ** 20:.1f} MiB)")
            continue
        total += size
        packed.append(f"{dist.metadata['Name']}=={dist.version}")
    (out / "PACKED.txt").write_text("\n".join(packed) + "\n")
    print(f"packed {len(packed)} wheels, {total / 2 ** 20:.1f} MiB, into {out}")
    if left:
        print(f"left out (over {args.limit_mib:g} MiB): {', '.join(left)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
