#!/usr/bin/env bash
# One-shot GPU check: benchmarks and GPU-only tests in one run, one markdown report.
#
#   benchmarks/gpu_check.sh [--device cuda|cpu] [--quick] [--output FILE] [--work_dir DIR] [--steps a,b]
#
# --device cuda (default): the full check, at most 8 minutes on one GPU; --device cpu --quick: every
# step at tiny size on CPU (a dry run of the whole check, a few minutes on 2 cores; CI runs it).
# The last line printed (and of the report) is "gpu_check: N/N steps ok". See docs/gpu-check.md.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$repo/.venv/bin/python" ]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi
exec "$PYTHON" "$repo/benchmarks/gpu_check.py" "$@"
