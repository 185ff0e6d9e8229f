"""The prepared GPU run of issue 18: install what travels, run the CUDA tests, measure; one command.

    bench/gpu_check.sh OUT              # on the GPU machine (its python3 holds torch)
    bench/gpu_check.sh --dry-run OUT    # the same parts on this CPU, tiny shapes, 1-2 steps (CI)

The parts, in this order, each in a process of its own with its own time limit, all under one
budget (a part that fails or runs out of time is recorded with its error; the next one runs):

* ``install``: the wheels in ``.whl/`` (bench/gpu_wheels.sh makes them) and then this checkout,
  into a folder put on PYTHONPATH, without network; then what is importable, the GPU, and the
  experts registered through the ``prismer`` entry points. The dry run uses this environment
  and only checks it.
* ``cuda_tests``: ``pytest -m cuda`` (tests/test_cuda.py; ``--accelerator cpu`` in the dry run).
* ``train_deepspeed`` and ``train_ddp``: bench/bench_train.py --gpu under torchrun, one process per
  GPU: the base spec with six experts in bf16, DeepSpeed ZeRO-2 and then DDP (with one GPU DDP is
  the plain engine: one process, no wrapper): images/s, MFU, peak memory, the batch's copy from
  the host; DDP also profiles two steps (the ops that take the time).
* ``caption``: bench/bench_model.py: base, six experts, bf16, 3 beams, 20 new tokens, batch 1 and 32.
* ``experts``: bench/bench_experts.py: depth, seg (Mask2Former) and objdet (YOLO) at their real
  sizes with random weights built from config, images/s at 224 and 384 pixels.

Writes OUT/gpu_check.json (rewritten after every part, atomically) and OUT/gpu_check.log (every
command with its output). Exits 0 when every part is ok.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The files holding the tests marked ``cuda`` (tests/test_gpu_check.py checks this list).
CUDA_TEST_FILES = ("tests/test_cuda.py",)
#: What the measuring parts import, checked after the install.
MODULES = ("torch", "torchvision", "transformers", "open_clip", "deepspeed", "ultralytics", "pydantic", "timm",
           "pluggy", "typer", "rich", "safetensors", "einops", "cv2", "yaml", "pytest")
#: The built-in experts whose registration (entry points) shows the project is installed.
EXPERTS = ("depth", "edge", "noise", "normal", "objdet", "ocr", "seg")
GPU_EXPERT_CASES = "depth,seg-mask2former,objdet"
#: Seconds kept back from the budget to write the results, and the least worth starting a part with.
RESERVE_S, MIN_PART_S = 5, 10
#: Seconds a part's processes get to end after SIGTERM, at its time limit, before SIGKILL.
GRACE_S = 5


@dataclass(frozen=True)
class Mode:
    """What the parts measure and how long each may take: the GPU run, or the dry run."""

    name: str
    device: str
    train: tuple[str, ...]  # bench_train.py --gpu settings
    caption: tuple[str, ...]  # bench_model.py settings
    experts: tuple[str, ...]  # bench_experts.py settings
    limits: dict[str, int] = field(default_factory=dict)  # seconds, by part
    budget_s: int = 0


GPU = Mode(
    "gpu", "cuda",
    train=("--spec", "base", "--batch-size", "64", "--steps", "20", "--warmup-steps", "2"),
    caption=("--shapes", "base", "--tasks", "caption_b1_bf16,caption_b32_bf16", "--repeats", "5"),
    experts=("--images", "32", "--batch", "8", "--sizes", "224,384"),
    # 440 s of parts in a 450 s budget: the whole command ends inside 8 minutes
    # (the first run, 2026-12-04, used 17, 51, 74, 58, 47 and 54 s: the install's time went to
    # the DDP part, which now also profiles)
    limits={"install": 40, "cuda_tests": 80, "train_deepspeed": 100, "train_ddp": 90, "caption": 60, "experts": 70},
    budget_s=450,
)
DRY_RUN = Mode(
    "dry-run", "cpu",
    train=("--spec", "tiny", "--spec-set", "image_size=32", "--spec-set", "decoder.vocab_size=1000",
           "--batch-size", "2", "--steps", "1", "--warmup-steps", "0"),
    caption=("--shapes", "check", "--tasks", "caption_b1_bf16,caption_b2_bf16", "--repeats", "1", "--threads", "1"),
    experts=("--tiny", "--images", "1", "--batch", "1", "--sizes", "64"),
    # DeepSpeed compiles its CPU communication op on its first start (about a minute, cached)
    limits={"install": 60, "cuda_tests": 180, "train_deepspeed": 400, "train_ddp": 180, "caption": 120, "experts": 120},
    budget_s=1000,
)


@dataclass
class Run:
    """One invocation: its mode, folders, interpreter, environment and results so far."""

    mode: Mode
    out: Path
    work: Path
    python: str
    site: Path
    env: dict[str, str]
    log: Path
    deadline: float
    report: dict
    gpus: int = 1
    lock: threading.Lock = field(default_factory=threading.Lock)

    def json_path(self, part: str) -> Path:
        return self.work / f"{part}.json"


@dataclass(frozen=True)
class Part:
    name: str
    #: the commands to run, in order: all of them, the part ok only when each succeeds
    commands: Callable[[Run], list[list[str]]]
    #: the part's result from its files (raises when they are missing or wrong)
    result: Callable[[Run], dict]


def install_commands(run: Run) -> list[list[str]]:
    check = [run.python, str(Path(__file__).resolve()), "--environment", str(run.json_path("install"))]
    if run.mode is DRY_RUN:
        return [check]
    wheels = sorted(str(p) for p in (REPO / ".whl").glob("*.whl"))
    pip = [run.python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
           "--upgrade", "--target", str(run.site)]
    return [*([[*pip, *wheels]] if wheels else []), [*pip, "--no-build-isolation", str(REPO)], [*check, "--need-cuda"]]


def cuda_test_commands(run: Run) -> list[list[str]]:
    # -v: each test's outcome reaches the log as it ends; a test still running after 60 s has
    # its stack written there (faulthandler), should the part's limit end it
    command = [run.python, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-o", "faulthandler_timeout=60",
               "-m", "cuda", *CUDA_TEST_FILES, "--junitxml", str(run.work / "cuda_tests.xml")]
    return [command + (["--accelerator", "cpu"] if run.mode is DRY_RUN else [])]


def cuda_test_result(run: Run) -> dict:
    suite = ElementTree.parse(run.work / "cuda_tests.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    if not counts["passed"]:
        raise RuntimeError(f"no CUDA test ran: {counts}")
    return counts


def train_commands(engine: str) -> Callable[[Run], list[list[str]]]:
    def commands(run: Run) -> list[list[str]]:
        return [[run.python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(run.gpus),
                 str(REPO / "bench" / "bench_train.py"), "--gpu", "--engine", engine, "--device", run.mode.device,
                 "--precision", "bf16", "--expert-sets", "six", *run.mode.train,
                 *(["--profile", "2"] if engine == "ddp" else []),  # where the time goes, once
                 "--json", str(run.json_path(f"train_{engine}"))]]

    return commands


def train_result(engine: str) -> Callable[[Run], dict]:
    def result(run: Run) -> dict:
        data = json.loads(run.json_path(f"train_{engine}").read_text())
        (row,) = data.pop("rows")
        return {**data, **row}

    return result


def caption_commands(run: Run) -> list[list[str]]:
    return [[run.python, str(REPO / "bench" / "bench_model.py"), "--experts", "six", "--device", run.mode.device,
             "--in-process", *run.mode.caption, "--out", str(run.json_path("caption"))]]


def caption_result(run: Run) -> dict:
    data = json.loads(run.json_path("caption").read_text())
    return {"machine": data["machine"], "rows": data["results"]}


def expert_commands(run: Run) -> list[list[str]]:
    return [[run.python, str(REPO / "bench" / "bench_experts.py"), "--device", run.mode.device,
             "--only", GPU_EXPERT_CASES, *run.mode.experts, "--json", str(run.json_path("experts"))]]


def json_result(part: str) -> Callable[[Run], dict]:
    return lambda run: json.loads(run.json_path(part).read_text())


PARTS = (
    Part("install", install_commands, json_result("install")),
    Part("cuda_tests", cuda_test_commands, cuda_test_result),
    Part("train_deepspeed", train_commands("deepspeed"), train_result("deepspeed")),
    Part("train_ddp", train_commands("ddp"), train_result("ddp")),
    Part("caption", caption_commands, caption_result),
    Part("experts", expert_commands, json_result("experts")),
)


def run_part(run: Run, part: Part) -> dict:
    """Run ``part``'s commands within its limit (and the budget); its record for the report.
    Their output goes to a log of the part's own, added to the main log when the part ends."""
    left = run.deadline - time.monotonic() - RESERVE_S
    limit = min(run.mode.limits[part.name], left)
    record: dict = {"ok": False, "seconds": 0.0, "limit_s": round(limit), "error": None, "result": None}
    log = run.work / f"{part.name}.log"
    start = time.monotonic()
    if left < MIN_PART_S:
        record["error"] = "skipped: the time budget was spent"
    else:
        errors = []
        try:
            commands = part.commands(run)
            record["commands"] = [" ".join(command) for command in commands]
            for command in commands:  # all of them: the install's check says what a failed step left
                left = limit - (time.monotonic() - start)
                error = _execute(run, command, left, log) if left >= 1 else f"not run, no time left: {' '.join(command[:4])}"
                errors += [error] if error else []
            try:
                record["result"] = part.result(run)
            except Exception as exc:  # no result, or an unreadable one: an error of its own when the commands succeeded
                errors += [] if errors else [f"no result: {type(exc).__name__}: {exc}"]
        except Exception as exc:  # a part's error is recorded; the other parts still run
            errors.append(f"{type(exc).__name__}: {exc}")
        record["ok"], record["error"] = not errors, "; ".join(errors) or None
    record["seconds"] = round(time.monotonic() - start, 1)
    output = log.read_text(errors="replace") if log.exists() else ""
    status = "ok" if record["ok"] else f"FAILED: {record['error']}"
    with run.lock:
        with open(run.log, "a") as main_log:
            main_log.write(f"=== {part.name} (at most {limit:.0f} s)\n{output}=== {part.name}: {status} ({record['seconds']} s)\n\n")
        print(f"{part.name}: {status} ({record['seconds']} s)", flush=True)
    return record


def _execute(run: Run, command: list[str], seconds: float, log_path: Path) -> str | None:
    """Run ``command`` with its output going to ``log_path``; None, or what went wrong."""
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        mark = log.tell()
        child = subprocess.Popen(command, cwd=REPO, env=run.env, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)  # its own group: killed as one
        try:
            code = child.wait(timeout=max(1.0, seconds))
        except subprocess.TimeoutExpired:
            _kill_group(child)
            return f"timed out after {seconds:.0f} s; output ended: {_tail(log_path, mark)}"
    if code:
        return f"exit status {code}: {_tail(log_path, mark)}"
    return None


def _kill_group(child: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        try:
            child.wait(timeout=GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, offset: int, lines: int = 6) -> str:
    """The last lines a command wrote to the log (from ``offset``), joined with ' | '."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        text = handle.read().decode("utf-8", "replace")
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip()) or "(no output)"


def write_report(run: Run) -> None:
    """OUT/gpu_check.json, whole or not at all (written as prismer_core/atomic.py does: this
    driver runs before the project is installed, so it cannot import it)."""
    target = run.out / "gpu_check.json"
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_text(json.dumps(run.report, indent=2) + "\n")
    os.replace(temporary, target)


def summary(report: dict) -> str:
    """One line per part: ok or the error, with its headline figures."""
    lines = []
    for name, record in report["parts"].items():
        if not record["ok"]:
            lines.append(f"{name:16} FAILED ({record['seconds']} s): {record['error']}")
            continue
        result, figures = record["result"], ""
        if name.startswith("train_"):
            mfu = f"{result['mfu']:.1%}" if result.get("mfu") is not None else "-"
            figures = f"{result['engine']}, {result['images_per_s']} images/s, MFU {mfu}, batch {result['batch_size']}"
            if result.get("batch_copy_s") is not None:  # the batch's copy from the host, on its own
                figures += f" ({result['batch_mb']} MB, copied in {result['batch_copy_s']} s)"
            if result.get("profile"):
                profile = result["profile"]
                figures += f"; kernels {profile['self_s_per_step']} s of a {profile['wall_s_per_step']} s step"
        elif name == "caption":
            figures = ", ".join(f"batch {row['batch']}: {row['seconds']:.3f} s" for row in result["rows"])
        elif name == "experts":
            figures = ", ".join(f"{row['case']} {'/'.join(f'{v:.3g}' for v in row['images_per_s'].values())} images/s"
                                for row in result["rows"])
        elif name == "cuda_tests":
            figures = f"{result['passed']} passed, {result['skipped']} skipped"
        elif name == "install":
            figures = f"{result.get('gpu') or 'no GPU'}, torch {result['versions'].get('torch')}"
        lines.append(f"{name:16} ok ({record['seconds']} s): {figures}")
    return "\n".join(lines)


def environment(path: Path, need_cuda: bool) -> None:
    """What the parts will find: the modules they import (found, not imported: the parts import
    them), the GPU, the registered experts; exits 1 when something they need is missing."""
    import importlib.metadata
    import importlib.util

    versions, problems = {}, []
    distributions = importlib.metadata.packages_distributions()
    for name in MODULES:
        if importlib.util.find_spec(name) is None:
            problems.append(f"{name} is not installed")
            continue
        try:
            versions[name] = importlib.metadata.version(distributions.get(name, [name])[0])
        except importlib.metadata.PackageNotFoundError:  # found on the path without metadata
            versions[name] = "?"
    import torch

    from prismer_core.registry import get_registry
    import prismer_core

    cuda = torch.cuda.is_available()
    registered = sorted(get_registry().experts)
    problems += [f"expert {name} is not registered (is the project installed?)" for name in EXPERTS if name not in registered]
    if need_cuda and not cuda:
        problems.append("torch sees no CUDA device")
    record = {
        "python": platform.python_version(), "versions": versions,
        "prismer": importlib.metadata.version("prismer"), "prismer_core": str(Path(prismer_core.__file__).parent),
        "experts": registered, "cuda": cuda, "gpus": torch.cuda.device_count() if cuda else 0,
        "gpu": torch.cuda.get_device_name(0) if cuda else None, "cpus": os.cpu_count(), "problems": problems,
    }
    path.write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))
    if problems:
        raise SystemExit("; ".join(problems))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, nargs="?", help="folder for gpu_check.json and gpu_check.log")
    parser.add_argument("--dry-run", action="store_true", help="the same parts on the CPU with tiny shapes (no install)")
    parser.add_argument("--site", type=Path, default=Path("/tmp/site"), help="where the GPU run installs (PYTHONPATH)")
    parser.add_argument("--budget", type=int, default=0, help="seconds for all parts [default: the mode's]")
    parser.add_argument("--jobs", type=int, default=1,
                        help="parts run side by side after the install (only for --dry-run, whose figures mean nothing)")
    parser.add_argument("--environment", type=Path, help=argparse.SUPPRESS)  # the install part's check
    parser.add_argument("--need-cuda", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.environment:
        environment(args.environment, args.need_cuda)
        return
    if args.out is None:
        parser.error("the output folder is missing: bench/gpu_check.sh [--dry-run] OUT")
    mode = DRY_RUN if args.dry_run else GPU
    if args.jobs > 1 and mode is GPU:
        parser.error("--jobs is for --dry-run: on the GPU the parts are measured one at a time")
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "gpu_check.log"
    log.write_text("")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "YOLO_OFFLINE": "1"}
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    env.setdefault("YOLO_CONFIG_DIR", str(work / "yolo"))
    env.setdefault("MPLCONFIGDIR", str(work / "matplotlib"))
    if mode is GPU:
        env["PYTHONPATH"] = os.pathsep.join([str(args.site), *filter(None, [os.environ.get("PYTHONPATH")])])
        env.setdefault("TORCH_EXTENSIONS_DIR", "/tmp/torch_extensions")
    else:  # shared with tests/test_train_distributed.py: DeepSpeed's CPU op is compiled once
        env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
        env.setdefault("OMP_NUM_THREADS", "1")
    budget = args.budget or mode.budget_s
    started = time.monotonic()
    report = {
        "mode": mode.name, "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "seconds": 0.0, "budget_s": budget, "host": platform.node(), "python": sys.executable, "parts": {},
    }
    run = Run(mode, args.out, work, sys.executable, args.site, env, log, started + budget, report)
    install, *others = PARTS

    def finish(part: Part) -> None:
        record = run_part(run, part)
        with run.lock:
            report["parts"][part.name] = record
            report["seconds"] = round(time.monotonic() - started, 1)
            write_report(run)

    try:
        finish(install)  # the others need what it installs, and the number of GPUs it found
        run.gpus = max(1, (report["parts"]["install"]["result"] or {}).get("gpus", 1))
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            list(pool.map(finish, others))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["parts"] = {part.name: report["parts"][part.name] for part in PARTS}  # in order, whatever ended first
    write_report(run)
    text = summary(report)
    with open(log, "a") as handle:
        handle.write(text + "\n")
    print(text)
    if not all(record["ok"] for record in report["parts"].values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
