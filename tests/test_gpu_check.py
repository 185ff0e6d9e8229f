"""bench/gpu_check.sh, the prepared GPU run: its dry run on this CPU, as a user runs it, and the
driver's handling of a part that fails or runs past its limit.

The dry run shares DeepSpeed's compiled CPU op with tests/test_train_distributed.py (the
repository's .cache/): whichever runs first in a fresh clone compiles it, once.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import gpu_check  # noqa: E402  (bench/gpu_check.py: the standard library only)

PARTS = ["install", "cuda_tests", "train_deepspeed", "train_ddp", "caption", "experts"]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check") / "out"
    env = {**os.environ, "PYTHON": sys.executable}
    # two parts at a time: on 2 cores this halves the time (the dry run's figures mean nothing)
    result = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--dry-run", "--jobs", "2", str(out)],
                            capture_output=True, text=True, env=env, timeout=900)
    return result, out


def test_the_dry_run_passes_every_part_and_writes_what_the_gpu_run_writes(dry_run):
    result, out = dry_run
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["mode"] == "dry-run" and list(report["parts"]) == PARTS
    # The script kills a part that runs past its limit and records it as failed, so `ok` is the
    # time check; how long the dry run took on this machine is no figure to assert on.
    for name, part in report["parts"].items():
        assert part["ok"] and part["error"] is None, name
        assert 0 < part["limit_s"] <= report["budget_s"], name
    parts = {name: part["result"] for name, part in report["parts"].items()}

    install = parts["install"]
    assert set(gpu_check.EXPERTS) <= set(install["experts"]) and not install["problems"]
    assert set(install["versions"]) == set(gpu_check.MODULES)

    assert parts["cuda_tests"]["passed"] == 4 and parts["cuda_tests"]["failures"] == 0

    for name, engine in (("train_deepspeed", "deepspeed"), ("train_ddp", "plain")):  # DDP in one process: plain
        train = parts[name]
        assert (train["engine"], train["precision"], train["device"]) == (engine, "bf16", "cpu")
        assert train["experts"] == ["depth", "normal", "edge", "seg", "objdet", "ocr"]
        assert train["images_per_s"] > 0 and train["flops_per_image"] > 0 and 0 < train["mfu"] < 1
        assert math.isfinite(train["loss_first"]) and math.isfinite(train["loss_last"])

    rows = parts["caption"]["rows"]
    assert [(row["task"], row["batch"], row["device"]) for row in rows] == [
        ("caption_b1_bf16", 1, "cpu"), ("caption_b2_bf16", 2, "cpu")]
    assert all(row["images_per_second"] > 0 for row in rows)

    experts = parts["experts"]["rows"]
    assert [row["case"] for row in experts] == gpu_check.GPU_EXPERT_CASES.split(",")
    assert all(list(row["images_per_s"]) == ["64"] and row["images_per_s"]["64"] > 0 for row in experts)


def test_the_log_holds_every_command_and_its_output(dry_run):
    _, out = dry_run
    log = (out / "gpu_check.log").read_text()
    for name in PARTS:
        assert f"=== {name} (at most" in log and f"=== {name}: ok" in log
    assert "bench_train.py --gpu --engine deepspeed --device cpu" in log
    assert "4 passed" in log  # pytest's own output
    assert log.rstrip().splitlines()[-1].startswith("experts ") and " ok (" in log.rstrip().splitlines()[-1]


def test_every_file_with_cuda_tests_is_run():
    marked = re.compile(r"^(pytestmark = |\s*@)pytest\.mark\.cuda\b", re.MULTILINE)
    files = sorted(f"tests/{path.name}" for path in (REPO / "tests").glob("test_*.py") if marked.search(path.read_text()))
    assert files == sorted(gpu_check.CUDA_TEST_FILES)


def test_a_failing_or_slow_part_is_recorded_and_the_next_ones_still_run(tmp_path):
    python = sys.executable

    def commands(code: str):
        return lambda run: [[python, "-c", code]]

    def result(run):
        return json.loads((run.work / "good.json").read_text())

    parts = [
        gpu_check.Part("fails", commands("import sys; print('broken here'); sys.exit(3)"), result),
        gpu_check.Part("slow", commands("import time; print('started', flush=True); time.sleep(60)"), result),
        gpu_check.Part("good", commands(f"open({str(tmp_path / 'good.json')!r}, 'w').write('{{\"images_per_s\": 5}}')"), result),
    ]
    mode = gpu_check.Mode("test", "cpu", (), (), (), limits={"fails": 30, "slow": 2, "good": 30}, budget_s=60)
    run = gpu_check.Run(mode, tmp_path, tmp_path, python, tmp_path / "site", dict(os.environ), tmp_path / "log",
                        time.monotonic() + 60, {})
    start = time.monotonic()
    fails, slow, good = (gpu_check.run_part(run, part) for part in parts)
    assert time.monotonic() - start < 30  # the sleeper was killed at its limit
    assert not fails["ok"] and fails["error"].startswith("exit status 3: broken here")
    assert not slow["ok"] and slow["error"].startswith("timed out after 2 s; output ended: started")
    assert good["ok"] and good["result"] == {"images_per_s": 5}
    log = (tmp_path / "log").read_text()
    assert "=== fails: FAILED: exit status 3" in log and "=== good: ok" in log

    run.deadline = time.monotonic() + gpu_check.RESERVE_S  # the budget is spent
    skipped = gpu_check.run_part(run, parts[2])
    assert not skipped["ok"] and skipped["error"] == "skipped: the time budget was spent"


def test_without_an_output_folder_it_says_how_to_call_it():
    result = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--dry-run"], capture_output=True, text=True,
                            env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 2
    assert "the output folder is missing: bench/gpu_check.sh [--dry-run] OUT" in result.stderr
