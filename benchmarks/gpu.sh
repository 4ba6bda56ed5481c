#!/usr/bin/env bash
# The GPU checks in one call, in under 8 minutes, on a borrowed machine that has torch but
# not audiocraft's pure-Python stack and cannot download: installs what it lacks from .whl/
# (made here by `.venv/bin/python scripts/pack_gpu_deps.py`, carried with the working tree),
# then runs, each under its own time limit (about 7.5 minutes in all), and writes one Markdown report:
#   1. the CUDA test cases (`-m cuda`: tests/test_engine.py's and the suite's other CUDA-parametrized tests);
#   2. benchmarks/decode.py: reference and engine, base and adapted, small and medium, batch 1 and 8,
#      two and three branches;
#   3. benchmarks/train.py at real size: small and medium, stage 1 and 2, batch 4 x 30 s windows,
#      bf16 autocast, with and without gradient checkpointing;
#   4. benchmarks/prepare.py --encoder ViT-B-32: cross-video encoder batches against per-video ones
#      (needs PyAV and decord on the machine: binary, too large to carry).
#
#   .venv/bin/python scripts/pack_gpu_deps.py     # here, once: .whl/ (ignored by git, so carried by name)
#   bash benchmarks/gpu.sh [REPORT]               # there, with .whl carried along; REPORT default:
#                                                 # $OUT/gpu_report.md (else ./gpu_report.md), logs beside it
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-.}
REPORT=${1:-$OUT_DIR/gpu_report.md}
LOGS=$OUT_DIR/gpu_logs
mkdir -p "$LOGS"
START=$(date +%s)

# -- what the machine lacks ----------------------------------------------------
SITE=$(mktemp -d)/site
mkdir -p "$SITE"
$PY - "$SITE" <<'EOF' > "$LOGS/setup.txt" 2>&1
"""Unzips onto SITE the packed wheels of the distributions this Python cannot find; stubs what must only import."""
import importlib.metadata as md, importlib.util, pathlib, re, sys, zipfile
site = pathlib.Path(sys.argv[1])
installed = []
for wheel in sorted(pathlib.Path(".whl").glob("*.whl")):
    name, version = wheel.name.split("-")[:2]
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        have = None
    if have is None:
        zipfile.ZipFile(wheel).extractall(site)
        installed.append(f"{name}=={version}")
print("installed from .whl:", " ".join(installed) or "nothing")
sys.path.insert(0, str(site))
# audiocraft imports at module level spacy (a tokenizer MusicGen does not use), PyAV (audio files) and
# librosa (melody models' chroma; it needs numba): where missing, stubs that import and do nothing.
STUB = ('"""Stub: importable, unusable (not on this machine)."""\nimport types\nSTUB = True\n\n\n'
        "def __getattr__(name):\n    if name.startswith('__'):\n        raise AttributeError(name)\n"
        "    return types.ModuleType(f'{__name__}.{name}')\n")
for module in ("spacy", "av", "librosa"):
    if importlib.util.find_spec(module) is None:
        (site / module).mkdir()
        (site / module / "__init__.py").write_text(STUB)
        print(f"stubbed {module} (missing here)")
missing = [m for m in ("numpy", "av", "decord", "soundfile", "safetensors", "tokenizers", "open_clip", "audiocraft",
                       "xformers", "transformers") if importlib.util.find_spec(m) is None]
print("still missing:", " ".join(missing) or "nothing")
EOF
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
REAL_AV=$($PY -c "import av, decord; print(not getattr(av, 'STUB', False))" 2>/dev/null || echo False)

section() {  # section TITLE SECONDS COMMAND...: runs it under a limit, its output into the report
  local title=$1 limit=$2; shift 2
  local log="$LOGS/$(echo "$title" | tr -c 'a-zA-Z0-9\n' '_').txt"
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$log" 2>&1
  local rc=$?
  {
    echo "## $title"
    echo
    echo "\`$*\`: exit $rc in $(( $(date +%s) - t0 )) s (limit $limit s)$([ $rc = 124 ] && echo ', timed out')"
    echo
    echo '```'
    grep -v -E "Warning|warn\(|^\s*$" "$log" | tail -n 60
    echo '```'
    echo
  } >> "$REPORT"
}

{
  echo "# GPU run $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  $PY -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda)"
  cat "$LOGS/setup.txt"
  echo '```'
  echo
} > "$REPORT"

CUDA_TESTS=$(grep -l -E "DEVICES|mark.cuda|^def cuda" tests/test_*.py | tr '\n' ' ')
section "CUDA tests" 80 $PY -m pytest -q -p no:cacheprovider --continue-on-collection-errors -m cuda $CUDA_TESTS
section "Decode: ms per step and x real time" 170 $PY benchmarks/decode.py --sizes small medium --batches 1 8 \
  --branches 2 3 --seconds 1 --rounds 2 --warmup 1 --markdown "$OUT_DIR/decode.md"
for size in small medium; do
  for stage in 1 2; do
    section "Training step: $size, stage $stage" $([ $size = small ] && echo 30 || echo 40) $PY benchmarks/train.py --size $size --stage $stage --batch 4 \
      --seconds 30 --steps 1 --bf16 --only cached cached-no-gc
  done
done
if [ "$REAL_AV" = "True" ]; then
  section "Prepare: ViT-B-32, cross-video against per-video batches" 50 $PY benchmarks/prepare.py \
    --encoder ViT-B-32 --backbone random-encodec --videos 4 --seconds 3 --rounds 1 --threads 4
else
  printf '## Prepare\n\nskipped: PyAV or decord is missing on this machine (binary wheels too large to carry)\n\n' >> "$REPORT"
fi
echo "total: $(( $(date +%s) - START )) s" >> "$REPORT"
cat "$REPORT"
