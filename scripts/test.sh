#!/usr/bin/env bash
# Installs everything the tests need (CPU torch, the package with its test extras, Debian's chromium for the
# real-browser test) and runs ruff and the whole test suite. Safe to run again: installed parts are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q "torch==2.13.0"
python -m pip install -q -r requirements-test.txt
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "could not install chromium: the browser test will fail" >&2
  else
    echo "chromium is missing: run 'sudo apt-get install chromium' for the browser test" >&2
  fi
fi
python -m ruff check lora_spectrum tests app.py
# Two workers (pytest-xdist), one per core: each test file runs whole in one worker (--dist loadfile), so a file's
# shared fixtures (the Ray pool, the quick trainer run) are built once; every process renders on one torch thread
# (tests/conftest.py), so two workers never fight over a core. The slowest tests are printed at the end.
python -m pytest -q -n 2 --dist loadfile --durations=15 "$@"
