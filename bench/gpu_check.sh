#!/usr/bin/env bash
# The prepared GPU run (issue 18), one command that ends within 8 minutes on one H200:
#
#   bench/gpu_check.sh OUT              on the GPU machine: installs the wheels in .whl/ and this
#                                       checkout into /tmp/site (no network), runs the CUDA tests,
#                                       measures base + six experts in bf16 (DeepSpeed ZeRO-2 and
#                                       DDP training, captioning at batch 1 and 32, the GPU experts)
#   bench/gpu_check.sh --dry-run OUT    the same parts on this CPU with tiny shapes and 1-2 steps,
#                                       in this environment (CI runs it: tests/test_gpu_check.py)
#
# Results: OUT/gpu_check.json (every part: ok, seconds, error, result) and OUT/gpu_check.log.
# What travels with it: .whl/ from bench/gpu_wheels.sh (see bench/README.md). The parts and their
# time limits are in bench/gpu_check.py. PYTHON picks the interpreter [default: python3 on the
# GPU machine; .venv/bin/python, else python3, for the dry run].
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dry=""
for arg in "$@"; do [[ "$arg" == "--dry-run" ]] && dry=1; done
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -n "$dry" && -x "$repo/.venv/bin/python" ]]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi
exec "$PYTHON" "$repo/bench/gpu_check.py" "$@"
