#!/usr/bin/env bash
# Builds this checkout's own virtual environment in .venv: torch, audiocraft (--no-deps),
# the rest of the stack, and vidmusician in editable mode (this checkout's code).
#
# Each checkout gets its own .venv, so two clones (a branch, a worktree, CI's clone) never
# run each other's code. uv fills it from its global wheel cache (~/.cache/uv, UV_CACHE_DIR
# moves it) by hard links, so a new clone with warm caches is set up in seconds. uv itself
# is installed once with pip into ~/.cache/vidmusician/uv-<version> when it is not on PATH.
# .venv/.requirements holds the hash of the requirement files it was built from: a rerun
# with unchanged requirements only reinstalls this checkout; any change rebuilds it. Every
# install runs under requirements/constraints.txt, the versions the stack was last tested with.
# VIDMUSICIAN_SETUP_WARM=0 skips warming the caches (scripts/check_install.py): for a
# throwaway checkout that runs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
UV_VERSION=0.13.9
stamp=$(cat requirements/torch.txt requirements/audiocraft.txt requirements/runtime.txt \
        requirements/constraints.txt | sha256sum | cut -c1-16)

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

# uv: the one on PATH, else a pinned copy installed once beside the other caches.
if command -v uv >/dev/null; then
  uv=$(command -v uv)
else
  tools="${VIDMUSICIAN_CACHE:-$HOME/.cache/vidmusician}/uv-$UV_VERSION"
  if [ ! -x "$tools/bin/uv" ]; then
    echo "setup: installing uv $UV_VERSION into $tools"
    rm -rf "$tools"
    "$PYTHON" -m venv "$tools"
    "$tools/bin/python" -m pip --disable-pip-version-check install -q "uv==$UV_VERSION"
  fi
  uv="$tools/bin/uv"
fi
# uv reads no pip.conf: hand it pip's local wheel folder and certificates where set.
[ -n "${PIP_FIND_LINKS:-}" ] && export UV_FIND_LINKS="${UV_FIND_LINKS:-$PIP_FIND_LINKS}"
[ -n "${PIP_CERT:-}" ] && export SSL_CERT_FILE="${SSL_CERT_FILE:-$PIP_CERT}"
export UV_PYTHON_DOWNLOADS=never

# An older setup made .venv a link into a venv shared by every clone: drop the link only.
if [ -L .venv ]; then
  echo "setup: replacing the link .venv (a venv shared by all clones) with this checkout's own"
  rm .venv
fi

if [ -f .venv/.requirements ] && [ "$(cat .venv/.requirements)" = "$stamp" ]; then
  echo "setup: .venv is up to date with requirements/"
else
  echo "setup: building .venv (seconds with warm caches, a few minutes without)"
  rm -rf .venv
  "$uv" venv -q --python "$PYTHON" .venv
  install=("$uv" pip install -q --python .venv/bin/python)
  # torch first, alone: a later resolution then keeps this torch build.
  "${install[@]}" -r requirements/torch.txt -c requirements/constraints.txt
  # audiocraft without its pins (torch==2.1.0, xformers<0.0.23, numpy<2), which cannot be
  # honored beside a modern torch.
  "${install[@]}" --no-deps -r requirements/audiocraft.txt -c requirements/constraints.txt
  "${install[@]}" -r requirements/runtime.txt -c requirements/torch.txt -c requirements/constraints.txt
  # pip inside the venv, for users who add a package by hand.
  "${install[@]}" pip
  echo "$stamp" > .venv/.requirements
fi

# This checkout, editable, into its own .venv.
"$uv" pip install -q --python .venv/bin/python --no-deps --no-build-isolation -e .
# Import the stack and warm its caches (bytecode, librosa's numba functions): see the script.
if [ "${VIDMUSICIAN_SETUP_WARM:-1}" = 0 ]; then
  .venv/bin/python -c "import vidmusician; print('setup: ok, vidmusician', vidmusician.__version__, 'from', vidmusician.__path__[0])"
else
  env -u PYTHONDONTWRITEBYTECODE .venv/bin/python scripts/check_install.py
fi
