#!/usr/bin/env bash
# Prepares .whl/ (git-ignored), the wheels bench/gpu_check.sh installs on the GPU machine, which
# reaches no package index. Run it here, where pip reaches PyPI, in the checkout that travels.
#
# What travels is exactly what the check's parts import and the machine lacks (open_clip_torch,
# deepspeed, pydantic, ultralytics: see /work/shared/env-notes.md), with the dependencies of
# those that it lacks too, at the versions pinned in constraints.txt, for CPython 3.12 on x86-64
# Linux (the machine's python3): about 25 MiB in all, against the 64 MiB a call may carry. Not
# carried: the MiniLM package (the tests make their own tokenizer, the benchmarks feed token ids),
# rapidocr (OCR runs on the CPU and is not measured), ultralytics' polars and ultralytics-platform
# (not imported to build, save or run a model), and torch and the rest, which are there.
# transformers, timm and typer are there too, but at other versions (transformers 5.17): the
# pinned ones travel, so the GPU runs the code CI tests (transformers 5.23 needs huggingface_hub
# >= 1.31 and tokenizers 0.23, which the machine has). typing_extensions travels because pydantic
# needs >= 4.16 and the machine's version is not known (newer ones are backward compatible). The
# project's own wheel travels too, as a fallback: gpu_check.sh installs the checkout over it.
#
#   bench/gpu_wheels.sh              # then: device run with carry [".whl"], bench/gpu_check.sh OUT
#
# PYTHON picks the interpreter that builds (it needs torch, for DeepSpeed's source build)
# [default: .venv/bin/python, else python3].
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
# Wheels on PyPI, and the source-only one (DeepSpeed publishes no wheel) built here.
BINARY=(open_clip_torch ftfy wcwidth hjson pydantic pydantic_core annotated-types typing-inspection typing_extensions
        ultralytics ultralytics-thop transformers timm typer)
SOURCE=(deepspeed)
LIMIT_MIB=60  # the working tree travels in the same 64 MiB

pin() {  # the constraints.txt line of a package, whatever its spelling (- or _, case)
  local pattern="^${1//[-_]/[-_]}=="
  grep -iE "$pattern" constraints.txt || { echo "gpu_wheels.sh: $1 is not pinned in constraints.txt" >&2; exit 1; }
}

pins=()
for name in "${BINARY[@]}"; do pins+=("$(pin "$name")"); done
rm -rf .whl && mkdir .whl  # one version of each: two would stop the install there
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${pins[@]}"
for name in "${SOURCE[@]}"; do
  "$PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation -w .whl "$(pin "$name")"
done
"$PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation -w .whl .
ls -l .whl
total=$(du -cb .whl/*.whl | tail -1 | cut -f1)
echo "$(ls .whl/*.whl | wc -l) wheels, $((total / 1024 / 1024)) MiB in .whl/"
if (( total > LIMIT_MIB * 1024 * 1024 )); then
  echo "gpu_wheels.sh: .whl/ is over ${LIMIT_MIB} MiB: the call to the GPU machine would be refused" >&2
  exit 1
fi
