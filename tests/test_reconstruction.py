"""Pixel reconstruction from the RGB patch tokens: on in the tiny spec only, targets laid out as
the tokens are, learnable, added to the loss by `prismer train`, logged, and saved with the model."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from model_helpers import make_batch, small_spec
from prismer_core.demo.scenes import generate_demo
from prismer_core.inputs import ModelInputs
from prismer_core.model import build_model
from prismer_core.model.prismer import Prismer, PrismerOutput
from prismer_core.train.engine import training_losses

pytestmark = pytest.mark.usefixtures("one_thread")
ON = {"reconstruction.weight": 1.0}


def test_the_tiny_spec_has_it_the_pretrained_ones_not_and_it_adds_only_its_head():
    assert build_model("tiny", device="meta").spec.reconstruction.weight == 1.0  # a tower trained from scratch
    for name in ("base", "large", "smol"):
        assert build_model(name, device="meta").spec.reconstruction.weight == 0
    torch.manual_seed(0)
    plain = build_model(small_spec(**{"reconstruction.weight": 0.0}))
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


def test_the_tokens_can_be_read_back_into_their_patches():
    torch.manual_seed(0)
    model = build_model(small_spec())
    generate = torch.Generator().manual_seed(1)
    rgb = torch.randn(4, 3, 4, 4, generator=generate).repeat_interleave(16, 2).repeat_interleave(16, 3)  # flat patches
    batch = ModelInputs(rgb=rgb)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    errors = []
    for _ in range(60):
        error = model.reconstruction(model.encode_images(batch)[:, 1:17], rgb, grid=4)
        optimizer.zero_grad()
        error.backward()
        optimizer.step()
        errors.append(error.item())
    assert errors[-1] < 0.1 * errors[0]


def test_training_adds_it_to_the_loss_logs_it_and_saves_its_head(cli, tmp_path):
    output = PrismerOutput(loss=torch.tensor(2.0), logits=torch.zeros(1), reconstruction_loss=torch.tensor(0.5))
    assert [float(x) for x in training_losses(output, 0.0, 3.0)] == [3.5]
    assert [float(x) for x in training_losses(output, 0.0, 0.0)] == [2.0]
    generate_demo(tmp_path / "data", n=20, seed=0, size=64)
    run = tmp_path / "run"
    cli("train", "--data", tmp_path / "data" / "train.jsonl", "--out", run, "--max-steps", "10",
        "--spec-set", "image_size=32", "--batch-size", "4", "--workers", "0", "--threads", "1", "--log-every", "5")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    errors = [r["reconstruction_loss"] for r in records if "reconstruction_loss" in r]
    assert len(errors) == 2 and all(0 < e < 10 for e in errors)
    saved = load_file(run / "checkpoints" / "step-000010" / "weights.safetensors")
    assert saved["reconstruction.head.weight"].shape == (48, 192)
    model = Prismer.from_pretrained(run / "checkpoints" / "step-000010")
    assert torch.equal(model.reconstruction.head.weight, saved["reconstruction.head.weight"])
