"""Pixel reconstruction from the RGB patch tokens: off by default, targets laid out as the
tokens are, trained with the language loss through `prismer train`, and saved with the model."""

from __future__ import annotations

import json

import pytest
import torch

from model_helpers import make_batch, small_spec
from prismer_core.demo.scenes import generate_demo
from prismer_core.model import build_model
from prismer_core.model.prismer import Prismer

pytestmark = pytest.mark.usefixtures("one_thread")
ON = {"reconstruction.weight": 1.0}


def test_it_is_off_by_default_and_adds_only_its_head_when_on():
    for name in ("tiny", "base", "large"):
        assert build_model(name, device="meta").spec.reconstruction.weight == 0
    torch.manual_seed(0)
    plain = build_model(small_spec())
    torch.manual_seed(0)
    both = build_model(small_spec(**ON))
    extra = set(both.state_dict()) - set(plain.state_dict())
    assert extra == {"reconstruction.head.weight", "reconstruction.head.bias"}
    assert all(torch.equal(tensor, both.state_dict()[key]) for key, tensor in plain.state_dict().items())
    assert both.parameter_report()["reconstruction"].trainable == 192 * 48 + 48  # 4×4 pixels × 3 per patch
    batch, ids = make_batch(plain), torch.randint(5, 1000, (2, 7))
    labels = ids.clone()
    assert plain(batch, ids, labels=labels).reconstruction_loss is None
    out = both(batch, ids, labels=labels)
    assert out.reconstruction_loss.ndim == 0 and out.reconstruction_loss > 0
    assert torch.equal(out.loss, plain(batch, ids, labels=labels).loss)  # the language loss is reported alone


def test_each_tokens_target_is_its_own_patch():
    model = build_model(small_spec(**ON))  # 64 px, patch 16: a 4×4 grid
    rgb = torch.zeros(1, 3, 64, 64)
    rgb[:, 0, :16, :16] = 1.0  # red in the top-left patch
    rgb[:, 2, 48:, 16:32] = 2.0  # blue in the bottom row, second column
    targets = model.reconstruction.targets(rgb, grid=4)  # [1, 16, 3·4·4], channels first within a patch
    assert targets.shape == (1, 16, 48)
    assert torch.equal(targets[0, 0, :16], torch.ones(16)) and targets[0, 0, 16:].abs().sum() == 0
    assert torch.equal(targets[0, 13, 32:], torch.full((16,), 2.0)) and targets[0, 13, :32].abs().sum() == 0
    assert targets[0, [i for i in range(16) if i not in (0, 13)]].abs().sum() == 0


def test_training_lowers_it_logs_it_and_the_checkpoint_loads_back(cli, tmp_path):
    generate_demo(tmp_path / "data", n=20, seed=0, size=64)
    run = tmp_path / "run"
    cli("train", "--data", tmp_path / "data" / "train.jsonl", "--out", run, "--max-steps", "30", "--lr", "1e-3",
        "--spec-set", "image_size=32", "--spec-set", "reconstruction.weight=1", "--batch-size", "4", "--workers", "0",
        "--threads", "1", "--log-every", "5")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    errors = [r["reconstruction_loss"] for r in records if "reconstruction_loss" in r]
    assert len(errors) == 6 and errors[-1] < 0.85 * errors[0]  # 0.45 -> 0.33 when measured
    model = Prismer.from_pretrained(run / "checkpoints" / "step-000030")
    assert model.spec.reconstruction.weight == 1.0 and model.reconstruction is not None
