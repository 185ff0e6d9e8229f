"""`prismer train` as users run it: the loss falls, runs resume after a kill or Ctrl-C, bad
data and unusable experts are refused with clear messages.

Most runs go through the CLI in this process (typer's runner: no interpreter start-up); the
kill and Ctrl-C tests need a real process of their own.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prismer_core.checkpoint import read_checkpoint_info
from prismer_core.demo import generate_demo
from prismer_core.model import Prismer
from prismer_core.specs import load_spec
from prismer_core.text import TextCodec
from prismer_core.train import TrainConfig, train

PRISMER = [sys.executable, "-m", "prismer_cli.main"]
#: Small and fast: the tiny spec on 32-pixel images (4 vision tokens of 16 pixels), one thread.
SMALL = ["--spec", "tiny", "--spec-set", "image_size=32", "--batch-size", "8", "--threads", "1"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    generate_demo(out, n=40, seed=1, size=64)
    return out


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def latest(run: Path) -> dict:
    return json.loads((run / "checkpoints" / "latest.json").read_text())


def wait_for(condition, process: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if condition():
                return
        except (OSError, ValueError):
            pass  # a file being replaced
        time.sleep(0.05)


def test_training_lowers_the_loss_and_writes_a_complete_run(cli, demo, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--data", demo / "train.jsonl", "--val-data", demo / "val.jsonl", "--task", "caption,vqa",
            "--out", run, "--lr", "2e-3", "--warmup-steps", "4", "--eval-every", "20", "--eval-samples", "8",
            "--workers", "1", *SMALL]
    result = cli(*args, "--max-steps", "40")
    assert f"checkpoint: {run / 'checkpoints' / 'step-000040'}" in result.stdout

    losses = [r["loss"] for r in metrics(run) if "loss" in r]
    assert len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 2.0, (first, last)  # from ~10.3 (uniform over 30k tokens) to well below
    utilisation = [r["mfu"] for r in metrics(run) if "loss" in r]
    assert all(u > 0 for u in utilisation)  # against the CPU's matmul peak, measured as the run starts
    validation = [r for r in metrics(run) if "val_loss_vqa" in r]
    assert [r["step"] for r in validation] == [20, 40] and validation[1]["val_loss_vqa"] < validation[0]["val_loss_vqa"]

    record = json.loads((run / "run.json").read_text())
    assert record["engine"] == "plain" and record["experts"] == {} and record["spec"]["image_size"] == 32
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert latest(run) == {"step": 40, "folder": "step-000040"}
    model = Prismer.from_pretrained(run / "checkpoints" / "step-000040", experts={})
    assert model.image_size == 32

    # a run folder is never overwritten; resuming needs the same settings (but may go longer)
    again = cli(*args, "--max-steps", "40", check=False)
    assert again.exit_code == 1 and "already holds a run: pass --resume" in again.stderr
    changed = cli(*args, "--max-steps", "42", "--resume", "--seed", "5", check=False)
    assert changed.exit_code == 1 and "seed: run has 0, now 5" in changed.stderr
    longer = cli(*args, "--max-steps", "42", "--resume")
    assert "trained to step 42" in longer.stdout and "resuming" in longer.stderr
    assert [r["step"] for r in metrics(run) if "loss" in r] == list(range(1, 43))


def test_sigkill_midway_then_resume_reaches_the_final_step(demo, tmp_path):
    run = tmp_path / "run"
    args = [*PRISMER, "train", "--data", demo / "train.jsonl", "--task", "vqa", "--out", run, "--max-steps", "16",
            "--checkpoint-every", "3", "--workers", "1", *SMALL]
    process = subprocess.Popen(list(map(str, args)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: latest(run)["step"] >= 6, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = latest(run)["step"]
    assert 6 <= killed_at < 16, "the kill should land midway"

    result = subprocess.run(list(map(str, [*args, "--resume"])), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"resuming {run} from step {killed_at}" in result.stderr
    assert latest(run) == {"step": 16, "folder": "step-000016"}
    assert [r["step"] for r in metrics(run)] == list(range(1, 17))  # redone after the checkpoint, not doubled
    Prismer.from_pretrained(run / "checkpoints" / "step-000016", experts={})
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest.json", "step-000015", "step-000016"]


def test_resume_continues_with_the_same_optimizer_state_and_data_order(demo, tmp_path):
    """Resuming from step 3 ends with exactly the weights of the uninterrupted run."""
    config = dict(data=[str(demo / "train.jsonl")], tasks=["caption", "vqa"], spec_overrides={"image_size": 32},
                  max_steps=6, batch_size=4, lr=1e-3, checkpoint_every=3, workers=1, threads=1)
    straight = tmp_path / "straight"
    train(TrainConfig(out=str(straight), **config), show_progress=False)

    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-000006")
    (resumed / "checkpoints" / "latest.json").write_text(json.dumps({"step": 3, "folder": "step-000003"}))
    result = train(TrainConfig(out=str(resumed), **config), resume=True, show_progress=False)
    assert result.step == 6

    expected = load_file(straight / "checkpoints" / "step-000006" / "weights.safetensors")
    actual = load_file(resumed / "checkpoints" / "step-000006" / "weights.safetensors")
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=1e-6, msg=name)
    assert [r["loss"] for r in metrics(resumed)] == [r["loss"] for r in metrics(straight)]


def test_ctrl_c_saves_a_checkpoint_and_exits(demo, tmp_path):
    run = tmp_path / "run"
    process = subprocess.Popen(
        list(map(str, [*PRISMER, "train", "--data", demo / "train.jsonl", "--out", run, "--max-steps", "1000",
                       "--workers", "1", *SMALL])),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    wait_for(lambda: len(metrics(run)) >= 3, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    step = latest(run)["step"]
    assert 3 <= step < 1000 and f"interrupted at step {step}" in stderr and "--resume" in stderr
    assert "Traceback" not in stderr
    Prismer.from_pretrained(run / "checkpoints" / f"step-{step:06d}", experts={})


def test_bad_rows_stop_or_are_skipped(cli, demo, tmp_path):
    """A corrupt image found by a loader worker is reported with its manifest line."""
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    rows = [json.dumps({"image": str(demo / "images" / "train" / f"{i:05d}.png"), "caption": "shapes"}) for i in range(8)]
    rows.insert(4, json.dumps({"image": "broken.png", "caption": "shapes"}))
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("\n".join(rows) + "\n")
    args = ["train", "--data", manifest, "--max-steps", "3", "--workers", "1", *SMALL]

    stopped = cli(*args, "--out", tmp_path / "stop", check=False)
    assert stopped.exit_code == 1
    assert stopped.stderr.startswith("Error:") or "\nError:" in stopped.stderr
    error = next(line for line in stopped.stderr.splitlines() if line.startswith("Error:"))
    assert f"{manifest}:5" in error and "cannot read image" in error and "--on-bad-row skip" in error

    skipped = cli(*args, "--out", tmp_path / "skip", "--on-bad-row", "skip")
    assert "trained to step 3" in skipped.stdout
    assert "skipped 1 bad rows, the first: cannot read image" in skipped.stderr and f"{manifest}:5" in skipped.stderr


def test_unusable_experts_are_refused_before_any_work(cli, demo, tmp_path):
    base = ["train", "--data", demo / "train.jsonl", "--out", tmp_path / "run", "--max-steps", "1", *SMALL]
    unknown = cli(*base, "--experts", "edge,ocrr", check=False)
    assert unknown.exit_code == 1 and "unknown expert 'ocrr'; did you mean 'ocr'" in unknown.stderr
    not_ready = cli(*base, "--experts", "edge,depth", check=False)
    assert not_ready.exit_code == 1
    assert "'depth'" in not_ready.stderr and "not ready" in not_ready.stderr and "PRISMER_DEPTH_MODEL" in not_ready.stderr
    assert "'edge'" not in not_ready.stderr  # only the unusable one is named
    assert not (tmp_path / "run").exists()  # refused before the run folder was made


def test_bad_spec_overrides_are_one_line_errors(cli, demo, tmp_path):
    base = ["train", "--data", demo / "train.jsonl", "--out", tmp_path / "run", "--max-steps", "1", *SMALL]
    unparsable = cli(*base, "--spec-set", "frozen=[vision.backbone", check=False)
    assert unparsable.exit_code == 1 and "--spec-set frozen=[vision.backbone: not a YAML value" in unparsable.stderr
    no_value = cli(*base, "--spec-set", "image_size", check=False)
    assert no_value.exit_code == 1 and "--spec-set 'image_size': write KEY=VALUE" in no_value.stderr
    assert not (tmp_path / "run").exists()


def test_experts_from_a_label_store(cli, demo, tmp_path):
    """edge + ocr maps written by `prismer label` on a folder of the photos, read back for
    training from a manifest that names the same files by other paths (found by content)."""
    store = tmp_path / "labels"
    few = demo / "first-four.jsonl"
    few.write_text("".join(line + "\n" for line in (demo / "train.jsonl").read_text().splitlines()
                           if json.loads(line)["image"] < "images/train/00004.png"))
    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(4):
        shutil.copy(demo / "images" / "train" / f"{index:05d}.png", photos / f"{index:05d}.png")
    cli("label", photos, "--experts", "edge,ocr", "--out", store, "--set", "edge.low=50")
    run = tmp_path / "run"
    cli("train", "--data", few, "--labels", store, "--experts", "edge,ocr", "--task", "caption,vqa",
        "--out", run, "--max-steps", "2", "--workers", "1", *SMALL)
    record = json.loads((run / "run.json").read_text())
    assert sorted(record["experts"]) == ["edge", "ocr"] and record["label_encoder"]
    assert record["experts"]["edge"]["settings"] == {"low": "50"}  # as the labels were made
    assert record["experts"]["ocr"]["settings"] == {}
    model = Prismer.from_pretrained(run / "checkpoints" / "step-000002")
    assert sorted(model.expert_specs) == ["edge", "ocr"]
    assert read_checkpoint_info(run / "checkpoints" / "step-000002").label_encoder == record["label_encoder"]

    missing = cli("train", "--data", demo / "train.jsonl", "--labels", store, "--experts", "edge",
                  "--out", tmp_path / "run2", "--max-steps", "2", "--workers", "1", *SMALL, check=False)
    assert missing.exit_code == 1 and "has no 'edge' labels for image" in missing.stderr
    assert "images/train/000" in missing.stderr  # the image is named for people

    # stored labels ignore expert settings: one that contradicts them is refused up front
    other = cli("train", "--data", few, "--labels", store, "--experts", "edge", "--set", "edge.low=80",
                "--out", tmp_path / "run3", "--max-steps", "2", "--workers", "1", *SMALL, check=False)
    assert other.exit_code == 1
    assert "holds 'edge' labels made with low=50, but edge.low=80 was given" in other.stderr
    assert not (tmp_path / "run3").exists()


def test_group_by_task_steps_hold_one_task_and_ranks_never_share_samples():
    from prismer_core.train.sampler import StepSampler

    tasks = ["caption"] * 10 + ["vqa"] * 30
    mixed = StepSampler(40, 4, 12, seed=3, rank=0, world_size=2)  # the default: no groups
    assert mixed.steps_per_epoch == 40 // 8
    assert any(len({tasks[i] for i, _ in mixed.batch(step)}) == 2 for step in range(12))
    ranks = [StepSampler(40, 4, 12, seed=3, rank=r, world_size=2, groups=tasks) for r in (0, 1)]
    assert ranks[0].steps_per_epoch == 1 + 3  # per epoch: 10 // 8 caption batches, 30 // 8 vqa batches
    for step in range(12):
        first, second = ([i for i, _ in sampler.batch(step)] for sampler in ranks)
        assert len({tasks[i] for i in first + second}) == 1  # one task per step, on every rank
        assert not set(first) & set(second)
    again = StepSampler(40, 4, 12, seed=3, rank=0, world_size=2, groups=tasks, start_step=5)
    assert list(again) == [ranks[0].batch(step) for step in range(5, 12)]  # resumable mid-epoch


def test_group_by_image_trains_every_text_of_an_image_on_one_encoding_of_it(cli, demo, tmp_path):
    from prismer_core.data.manifest import load_data
    from prismer_core.model import build_model
    from prismer_core.train.trainer import collator, training_data

    config = TrainConfig(data=[str(demo / "train.jsonl")], out=str(tmp_path / "unused"), tasks=["caption", "vqa"],
                         group_by_image=True, spec_overrides={"image_size": 32}, batch_size=3)
    torch.manual_seed(0)
    model = build_model(load_spec("tiny", {"image_size": 32}), {}).eval()
    samples = load_data(config.data, config.tasks).samples
    data = training_data(config, model, {}, samples, None, None)
    assert len(data) == len({s.image.source for s in samples}) < len(samples)
    batch = collator(config, model)([data[(i, 7)] for i in range(3)])
    rows = [len(data.images[i]) for i in range(3)]
    assert batch.size == batch.inputs.rgb.shape[0] == 3 and batch.input_ids.shape[0] == sum(rows) > 3
    by_length = sorted(range(sum(rows)), key=lambda r: (int(batch.attention_mask[r].sum()), r))
    assert by_length == list(range(sum(rows))) and 1 < len(batch.buckets) <= 3  # captions and questions apart
    assert sorted(batch.row_image.tolist()) == [i for i, n in enumerate(rows) for _ in range(n)]
    assert sorted(batch.tasks) == sorted(samples[j].task for i in range(3) for j in data.images[i])
    # reading an image by its row index is the same as repeating the image for each row
    with torch.no_grad():
        grouped = model(**batch.arguments())  # rows sorted by length, decoded in runs of their own width
        repeated = model(batch.inputs.select(batch.row_image), batch.input_ids, batch.attention_mask, batch.labels)
    assert torch.allclose(grouped.loss, repeated.loss, atol=1e-5)

    run = tmp_path / "run"
    result = cli("train", "--data", demo / "train.jsonl", "--task", "caption,vqa", "--out", run, "--group-by-image",
                 "--max-steps", "6", "--lr", "2e-3", "--warmup-steps", "2", *SMALL,
                 "--spec-set", "decoder.output_vocabulary=data")
    assert "trained to step 6" in result.stdout
    record = json.loads((run / "run.json").read_text())
    assert record["config"]["group_by_image"] is True
    # with output_vocabulary: data the decoder writes the tokens of the run's targets, and so does its checkpoint
    written = record["spec"]["decoder"]["output_vocabulary"]
    codec = TextCodec.for_decoder(load_spec("tiny").decoder)
    rows = [json.loads(line) for line in (demo / "train.jsonl").read_text().splitlines()]
    targets = {token for row in rows for text in [row.get("caption"), row.get("answer")] if text
               for token in codec.tokenizer(text)["input_ids"][1:]}  # the text's tokens and the end token
    assert targets == set(written) and len(written) < 200
    first = [r["loss"] for r in metrics(run) if "loss" in r][0]
    assert first < math.log(len(written)) + 1.0  # about uniform over what it writes at the start
    assert Prismer.from_pretrained(run / "checkpoints" / "step-000006", experts={}).decoder.output_ids.tolist() == written
    epoch = [r["epoch"] for r in metrics(run) if "loss" in r][-1]
    assert epoch == round(6 * 8 / len(data), 3)  # an epoch is every image once
    both = cli("train", "--data", demo / "train.jsonl", "--out", tmp_path / "no", "--group-by-image", "--group-by-task",
               *SMALL, check=False)
    assert both.exit_code != 0 and "exclude each other" in both.stderr and not (tmp_path / "no").exists()


def test_length_buckets_cut_sorted_rows_where_the_padding_saved_is_largest():
    from prismer_core.data.dataset import length_buckets

    assert length_buckets([7, 7, 7]) == ((0, 3, 7),)
    questions_and_captions = [12] * 10 + [13] * 4 + [30, 31]
    assert length_buckets(questions_and_captions) == ((0, 10, 12), (10, 14, 13), (14, 16, 31))
    assert length_buckets(questions_and_captions, most=2) == ((0, 14, 13), (14, 16, 31))
    assert length_buckets([3, 40], most=1) == ((0, 2, 40),)
