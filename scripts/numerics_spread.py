"""Measures how far the tests' tolerance comparisons move across CPU kernels and thread counts.

Runs the tests marked ``numerics`` once per setting (ATen's vector kernels
``ATEN_CPU_CAPABILITY`` = default / avx2 / avx512, MKL's instruction set to
match, 1 or 2 threads) and prints, for every ``torch.testing.assert_close`` the
tests call, the largest absolute difference seen in each setting and the share
of the test's bound it used (``max |a - b| / (atol + rtol * |b|)``). A bound
should sit well above the largest share (10x or more): these are the numbers
the tolerances in the tests cite.

Usage::

    python scripts/numerics_spread.py [pytest args, default: -m numerics tests]

As a pytest plugin (``-p numerics_spread``, with ``scripts/`` on the path) it
appends one JSON line per comparison to ``$NUMERICS_SPREAD_LOG``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# (name, environment): ATen's kernels and MKL's matrix products restricted together, as
# on a CPU without AVX-512 (avx2) or without AVX (default); 2 threads split reductions.
SETTINGS = [
    ("avx512 1t", {"ATEN_CPU_CAPABILITY": "avx512", "VIDMUSICIAN_TEST_THREADS": "1"}),
    ("avx512 2t", {"ATEN_CPU_CAPABILITY": "avx512", "VIDMUSICIAN_TEST_THREADS": "2"}),
    ("avx2 1t", {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "VIDMUSICIAN_TEST_THREADS": "1"}),
    ("avx2 2t", {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "VIDMUSICIAN_TEST_THREADS": "2"}),
    ("default 1t", {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
                    "VIDMUSICIAN_TEST_THREADS": "1"}),
    ("default 2t", {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
                    "VIDMUSICIAN_TEST_THREADS": "2"}),
]

# NUMERICS_SPREAD_SETTINGS="avx2 1t,default 2t" runs only those.
_only = [n.strip() for n in os.environ.get("NUMERICS_SPREAD_SETTINGS", "").split(",") if n.strip()]
SETTINGS = [(n, env) for n, env in SETTINGS if not _only or n in _only]
# Seeds of the tests' random adapter weights (conftest's numerics_seed): each draw rounds differently.
SEEDS = [int(s) for s in os.environ.get("NUMERICS_SPREAD_SEEDS", "0 1 2").split()]

_current = {"test": None, "calls": 0}


def pytest_configure(config):
    import torch

    original = torch.testing.assert_close

    def recording(actual, expected, *args, **kwargs):
        _record(actual, expected, kwargs)
        if not os.environ.get("NUMERICS_SPREAD_RECORD_ONLY"):
            return original(actual, expected, *args, **kwargs)

    torch.testing.assert_close = recording


def pytest_runtest_setup(item):
    _current["test"], _current["calls"] = item.nodeid, 0


def _record(actual, expected, kwargs):
    import torch

    path = os.environ.get("NUMERICS_SPREAD_LOG")
    if not path or not isinstance(actual, torch.Tensor) or not actual.is_floating_point():
        return
    _current["calls"] += 1
    a, b = actual.detach().double().cpu(), torch.as_tensor(expected).detach().double().cpu()
    finite = torch.isfinite(a) & torch.isfinite(b)
    a, b = a[finite], b[finite]
    atol = kwargs.get("atol")
    rtol = kwargs.get("rtol")
    if atol is None:  # assert_close's float32 defaults
        atol, rtol = 1e-5, 1.3e-6
    diff = (a - b).abs()
    used = (diff / (atol + rtol * b.abs())).max().item() if diff.numel() else 0.0
    row = {"test": f"{_current['test']} #{_current['calls']}", "max_abs": diff.max().item() if diff.numel() else 0.0,
           "used": used, "atol": atol, "rtol": rtol}
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def main(argv: list[str]) -> int:
    args = argv or ["-m", "numerics", "tests"]
    table: dict[str, dict[str, dict]] = defaultdict(dict)
    failed = []
    for (name, env), seed in ((s, seed) for s in SETTINGS for seed in SEEDS):
        with tempfile.NamedTemporaryFile(suffix=".jsonl") as log:
            # Record only: a comparison past its bound must not hide the ones after it.
            path = os.pathsep.join([str(REPO), str(REPO / "scripts"), os.environ.get("PYTHONPATH", "")])
            run_env = dict(os.environ, **env, NUMERICS_SPREAD_LOG=log.name, NUMERICS_SPREAD_RECORD_ONLY="1",
                           VIDMUSICIAN_TEST_SEED=str(seed), OMP_NUM_THREADS=env["VIDMUSICIAN_TEST_THREADS"],
                           PYTHONPATH=path)
            command = [sys.executable, "-m", "pytest", "-q", "-p", "numerics_spread", "-p", "no:cacheprovider", *args]
            rc = subprocess.run(command, cwd=REPO, env=run_env, stdout=subprocess.DEVNULL).returncode
            if rc:
                failed.append(f"{name} seed {seed}")
            for line in Path(log.name).read_text().splitlines():
                row = json.loads(line)
                seen = table[row["test"]].get(name)
                if seen is None or row["used"] > seen["used"]:
                    table[row["test"]][name] = row
    names = [n for n, _ in SETTINGS]
    print("comparison".ljust(90), *(n.rjust(19) for n in names))
    for test, by_setting in sorted(table.items()):
        cells = []
        for n in names:
            row = by_setting.get(n)
            cells.append("-".rjust(19) if row is None else f"{row['max_abs']:.1e} ({row['used']:.3f})".rjust(19))
        any_row = next(iter(by_setting.values()))
        print(f"{test[-75:]} [{any_row['atol']:.0e}]".ljust(90), *cells)
    print(f"cells: max |a - b| (share of the bound used) over seeds {SEEDS}; runs that failed elsewhere:",
          ", ".join(failed) or "none")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
