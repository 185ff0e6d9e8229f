"""Training and captioning on a GPU, as users run them; skipped where torch sees no CUDA device.

bench/gpu_check.sh runs these on the GPU machine (``pytest -m cuda``). Its dry run runs the same
tests on the CPU (``pytest -m cuda --accelerator cpu``), so that CI checks the tests themselves.
The model is the inference tests' small one (tests/inference_helpers.py), trained for a few steps.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from inference_helpers import CAPTION_PROMPT, demo_tokenizer, small_spec
from plugin_helpers import run_cli
from prismer_core.data.dataset import Batch
from prismer_core.demo import generate_demo
from prismer_core.inference import Predictor
from prismer_core.inputs import ModelInputs
from prismer_core.train.distributed import deepspeed_installed
from prismer_core.train.utilisation import peak_flops

pytestmark = pytest.mark.cuda

STEPS = 8


@pytest.fixture(scope="module")
def accelerator(request) -> str:
    device = request.config.getoption("--accelerator")
    if device.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device (bench/gpu_check.sh runs these on a GPU machine)")
    return device


@pytest.fixture(scope="module")
def demo(accelerator, tmp_path_factory) -> Path:  # after the accelerator: no data made to be skipped
    folder = tmp_path_factory.mktemp("cuda")
    generate_demo(folder / "data", n=16, seed=5, size=64)
    demo_tokenizer(folder / "tokenizer", folder / "data" / "train.jsonl")
    return folder


def train(demo: Path, out: Path, device: str, *options: str):
    """``prismer train`` on the demo data with the small spec, on ``device``."""
    spec = [arg for key, value in small_spec(demo / "tokenizer").items() for arg in ("--spec-set", f"{key}={value}")]
    with pytest.MonkeyPatch.context() as patch:
        return run_cli(patch, "train", "--data", demo / "data" / "train.jsonl", "--task", "caption,vqa", "--out", out,
                       "--spec", "tiny", *spec, "--device", device, "--batch-size", "8", "--lr", "3e-3",
                       "--warmup-steps", "2", "--workers", "0", "--caption-prompt", CAPTION_PROMPT, *options)


def on_gpu(device: str) -> bool:
    return device.startswith("cuda")


@pytest.fixture(scope="module")
def trained_run(demo, accelerator) -> Path:
    """Trained with the plain engine in the device's own precision (bf16 autocast on a GPU, fp32
    on the CPU, where bf16 is 7 times slower), the edge expert run on the fly."""
    out = demo / "run"
    train(demo, out, accelerator, "--engine", "plain", "--experts", "edge", "--max-steps", str(STEPS), "--log-every", "1")
    return out


def test_training_on_the_device_lowers_the_loss_and_reports_mfu(trained_run, accelerator):
    record = json.loads((trained_run / "run.json").read_text())
    assert record["device"].startswith(accelerator)
    assert record["engine"] == "plain"
    assert record["precision"] == ("bfloat16" if on_gpu(accelerator) and torch.cuda.is_bf16_supported() else "float32")
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row]
    assert len(losses) == STEPS and all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-3:]) < sum(losses[:3])  # it learns: the demo's captions repeat
    assert all(row["images_per_s"] > 0 for row in rows if "images_per_s" in row)
    if peak_flops(record["device"]) is not None:  # a GPU the datasheet table knows, or the CPU
        assert all(0 < row["mfu"] < 1 for row in rows if "images_per_s" in row)


def test_answers_ranked_on_the_device_score_as_on_the_cpu(trained_run, demo, accelerator):
    rows = [json.loads(line) for line in (demo / "data" / "test.jsonl").read_text().splitlines()]
    questions = [row for row in rows if "question" in row][:2]
    images = [demo / "data" / row["image"] for row in questions]
    answers = sorted({row["answer"] for row in rows if "answer" in row})
    here = Predictor.from_checkpoint(trained_run, device=accelerator)
    cpu = Predictor.from_checkpoint(trained_run, device="cpu")
    assert here.device.type == torch.device(accelerator).type
    ranked, expected = (p.rank(images, [row["question"] for row in questions], answers) for p in (here, cpu))
    for got, want in zip(ranked, expected):
        assert got.answer == want.answer
        # fp32 both; a GPU's convolutions use TF32 by default, hence the tolerance
        assert dict(zip(got.candidates, got.scores)) == pytest.approx(dict(zip(want.candidates, want.scores)), abs=0.05)


def test_captions_in_bf16_on_the_device(trained_run, demo, accelerator):
    images = sorted((demo / "data" / "images" / "test").glob("*.png"))[:3]
    with pytest.MonkeyPatch.context() as patch:
        result = run_cli(patch, "caption", *images, "--checkpoint", trained_run, "--device", accelerator,
                         "--precision", "bf16", "--min-length", "2")
    lines = result.stdout.strip().splitlines()[-len(images):]
    assert [line.split(": ", 1)[0] for line in lines] == [str(image) for image in images]
    assert all(len(line.split(": ", 1)[1].split()) >= 2 for line in lines)


def test_the_training_loader_hands_the_gpu_page_locked_batches(accelerator):
    """``pin_memory=True`` pins only what says how: a dataclass batch stayed pageable, so each
    copy to the GPU was synchronous, until Batch and ModelInputs learnt ``pin_memory``."""
    if not on_gpu(accelerator):
        pytest.skip("page-locked memory is for copies to a GPU")
    inputs = ModelInputs(torch.randn(2, 3, 8, 8), {"edge": torch.rand(2, 1, 8, 8), "seg": torch.zeros(2, 8, 8, dtype=torch.int32)},
                         {"seg": torch.zeros(2, 8, 8, dtype=torch.long)}, {"edge": torch.ones(2, dtype=torch.bool)},
                         {"seg": torch.rand(2, 3, 64)})
    ids = torch.ones(2, 5, dtype=torch.long)
    batch = Batch(inputs, ids, ids, ids, ["caption", "caption"], [])
    loader = torch.utils.data.DataLoader([0], batch_size=1, collate_fn=lambda _: batch, pin_memory=True)
    pinned = next(iter(loader))
    tensors = [pinned.inputs.rgb, *pinned.inputs.experts.values(), *pinned.inputs.instances.values(),
               *pinned.inputs.present.values(), *pinned.inputs.label_tables.values(),
               pinned.input_ids, pinned.attention_mask, pinned.labels]
    assert len(tensors) == 10 and all(t.is_pinned() for t in tensors)


def test_the_default_engine_trains_on_one_device(demo, accelerator):
    """Last in this file: on a GPU with DeepSpeed this is DeepSpeed in one process, launched
    without torchrun (what `prismer train --device cuda` does), the least tried path."""
    out = demo / "default-run"
    result = train(demo, out, accelerator, "--max-steps", "2")
    assert "trained to step 2" in result.stdout
    record = json.loads((out / "run.json").read_text())
    assert record["engine"] == ("deepspeed" if on_gpu(accelerator) and deepspeed_installed() else "plain")
