#!/usr/bin/env bash
# Builds the virtual environment with torch, audiocraft (--no-deps) and the rest
# of the stack, and installs vidmusician into it in editable mode.
#
# The environment lives in a cache folder keyed by the hash of the requirement
# files (VIDMUSICIAN_VENV_CACHE, default ~/.cache/vidmusician) and .venv links
# to it, so a fresh clone with unchanged requirements reuses it in seconds.
# Any change to requirements/*.txt builds a new one; a half-built one is never
# reused (the .complete marker is written last). Every install runs under
# requirements/constraints.txt, the versions the stack was last tested with.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=$(cat requirements/torch.txt requirements/audiocraft.txt requirements/runtime.txt \
        requirements/constraints.txt | sha256sum | cut -c1-16)
cache=${VIDMUSICIAN_VENV_CACHE:-$HOME/.cache/vidmusician}
venv="$cache/venv-$stamp"

# The browser test of `vidmusician demo` drives Debian's Chromium through its
# chromedriver: install both where either is missing (CI runs as root with apt).
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing chromium and chromium-driver (for the browser test)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
  else
    echo "setup: warning: /usr/bin/chromium or /usr/bin/chromedriver is missing and this is not root with" \
         "apt-get; run \`sudo apt-get install chromium chromium-driver\` or the browser test is skipped" >&2
  fi
fi

if [ -f "$venv/.complete" ]; then
  echo "setup: reusing $venv (requirements unchanged)"
else
  echo "setup: building $venv (a few minutes)"
  rm -rf "$venv"
  mkdir -p "$cache"
  "$PYTHON" -m venv "$venv"
  pip=("$venv/bin/python" -m pip --disable-pip-version-check)
  "${pip[@]}" install -q --upgrade pip
  # torch first: otherwise a later package pulls a second torch build.
  "${pip[@]}" install -r requirements/torch.txt -c requirements/constraints.txt
  # audiocraft without its pins (torch==2.1.0, xformers<0.0.23, numpy<2);
  # pip prints a resolver complaint about them and still succeeds.
  "${pip[@]}" install --no-deps -r requirements/audiocraft.txt -c requirements/constraints.txt
  "${pip[@]}" install -r requirements/runtime.txt -c requirements/torch.txt -c requirements/constraints.txt
  touch "$venv/.complete"
fi

if [ -e .venv ] && [ ! -L .venv ]; then
  echo "setup: .venv exists and is not a link made by this script; move it away first" >&2
  exit 1
fi
ln -sfn "$venv" .venv
# Editable install of this checkout (cheap; points the cached venv at this clone).
.venv/bin/python -m pip --disable-pip-version-check install -q --no-deps --no-build-isolation -e .
.venv/bin/python -c "import vidmusician, audiocraft, open_clip, decord, peft, accelerate; print('setup: ok, vidmusician', vidmusician.__version__)"
