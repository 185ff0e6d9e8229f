"""Per-part learning rates: each part trains at its factor of --lr through warm-up and decay."""

from __future__ import annotations

import json

import pytest
import torch

from model_helpers import experts, small_spec
from prismer_core.demo.scenes import generate_demo
from prismer_core.errors import PrismerError
from prismer_core.model import build_model
from prismer_core.model.prismer import part_of
from prismer_core.train import TrainConfig
from prismer_core.train.engine import base_lr, make_optimizer


def test_each_part_trains_at_its_factor_of_the_rate_all_the_way_through_the_schedule():
    model = build_model(small_spec(), experts("edge"))
    config = TrainConfig(data=["-"], out="-", lr=1e-3, max_steps=20, warmup_steps=5,
                         lr_scales={"vision.backbone": 0.1, "vision.stems": 2.0}).validate()
    optimizer, scheduler = make_optimizer(model, config, torch.device("cpu"))
    names = {id(p): n for n, p in model.named_parameters()}
    grouped = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(n for n, p in model.named_parameters() if p.requires_grad)  # each once
    for step in range(12):
        for group in optimizer.param_groups:
            (scale,) = {config.lr_scales.get(part_of(names[id(p)]), 1.0) for p in group["params"]}
            assert group["lr_scale"] == scale and group["lr"] == pytest.approx(base_lr(optimizer) * scale)
            assert group["weight_decay"] == (0.05 if group["params"][0].ndim >= 2 else 0.0)
        assert base_lr(optimizer) == pytest.approx(scheduler.get_last_lr()[0] / optimizer.param_groups[0]["lr_scale"])
        optimizer.step()
        scheduler.step()
    assert base_lr(optimizer) < 1e-3  # decaying after the warm-up


@pytest.mark.parametrize(
    ("scales", "message"),
    [({"vision.bakbone": 0.1}, "--lr-scale vision.bakbone: no such part"), ({"vision.stems": 0}, "must be positive"),
     ({"vision.stems": "fast"}, "must be a number")],
)
def test_bad_scales_are_refused_before_anything_runs(scales, message):
    with pytest.raises(PrismerError, match=message):
        TrainConfig(data=["d.jsonl"], out="-", lr_scales=scales).validate()


def test_the_cli_records_the_scales_and_logs_the_base_rate(cli, tmp_path):
    generate_demo(tmp_path / "data", n=20, seed=0, size=64)
    run = tmp_path / "run"
    cli("train", "--data", tmp_path / "data" / "train.jsonl", "--task", "vqa", "--out", run, "--max-steps", "3",
        "--spec-set", "image_size=32", "--batch-size", "4", "--workers", "0", "--threads", "1", "--lr", "1e-3",
        "--warmup-steps", "0", "--lr-scale", "vision.backbone=0.25", "--lr-scale", "decoder.embeddings=0.5")
    record = json.loads((run / "run.json").read_text())
    assert record["config"]["lr_scales"] == {"vision.backbone": 0.25, "decoder.embeddings": 0.5}
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert first["lr"] == pytest.approx(1e-3)
    bad = cli("train", "--data", tmp_path / "data" / "train.jsonl", "--out", tmp_path / "bad", "--lr-scale", "vision", check=False)
    assert bad.exit_code != 0 and "--lr-scale vision.backbone=0.1" in bad.output and not (tmp_path / "bad").exists()
