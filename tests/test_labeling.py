"""`prismer label` as a user runs it: store layout, resume after a kill, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from prismer_core.data.label_store import LabelStore

PRISMER = [sys.executable, "-m", "prismer_cli.main"]
ENV = {**os.environ, "PRISMER_LOAD_PLUGINS": "edge"}


def make_images(folder: Path, count: int, size: int = 96) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        image = Image.new("RGB", (size, size), (20, 20, 20))
        ImageDraw.Draw(image).rectangle((10 + i % 30, 15, 60, 70), fill=(220, 40 + i % 200, 40))
        path = folder / f"img{i:03d}.png"
        image.save(path)
        paths.append(path)
    return paths


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*PRISMER, *args], capture_output=True, text=True, env=ENV)
    if check and result.returncode != 0:
        raise AssertionError(result.stderr)
    return result


def test_label_writes_store_and_previews(tmp_path):
    make_images(tmp_path / "images" / "sub", 3)
    out = tmp_path / "store"
    result = run("label", str(tmp_path / "images"), "--experts", "edge", "--out", str(out), "--visualize")
    assert "labelled 3 images" in result.stdout

    meta = json.loads((out / "store.json").read_text())
    assert meta["experts"]["edge"]["version"] == "1.0"
    store = LabelStore(out)
    edge = store.read("edge", "sub/img000.png")
    assert edge.data.shape == (96, 96, 1) and edge.data.dtype == np.float32
    assert edge.data.max() == pytest.approx(1.0) and edge.data.min() == pytest.approx(-1.0)
    preview = Image.open(out / "previews" / "edge" / "sub" / "img000.png.png")
    assert preview.width > preview.height  # image and map side by side
    assert not list(out.rglob("*.tmp"))

    again = run("label", str(tmp_path / "images"), "--experts", "edge", "--out", str(out), "--visualize")
    assert "labelled 0 images" in again.stdout and "3 already done" in again.stdout


def test_store_records_settings_and_refuses_to_mix_in_other_ones(tmp_path):
    make_images(tmp_path / "images", 2)
    out = tmp_path / "store"
    run("label", str(tmp_path / "images"), "--experts", "edge", "--out", str(out), "--set", "edge.low=50")
    assert LabelStore(out).settings("edge") == {"low": "50"}
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}

    make_images(tmp_path / "more", 1)[0].rename(tmp_path / "more" / "new.png")
    other = run("label", str(tmp_path / "more"), "--experts", "edge", "--out", str(out), check=False)
    assert other.returncode == 1
    assert "holds 'edge' labels made with low=50, but this run uses default settings" in other.stderr
    assert "Traceback" not in other.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing written

    same = run("label", str(tmp_path / "more"), "--experts", "edge", "--out", str(out), "--set", "edge.low=50")
    assert "labelled 1 images" in same.stdout


def test_killed_run_resumes_without_redoing_finished_images(tmp_path):
    make_images(tmp_path / "images", 150, size=256)
    out = tmp_path / "store"
    command = [*PRISMER, "label", str(tmp_path / "images"), "--experts", "edge", "--out", str(out),
               "--visualize", "--batch-size", "1"]
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list((out / "edge").glob("*.npz"))) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in (out / "edge").glob("*.npz")}
    assert 10 <= len(finished) < 150, "the kill should land midway"
    for leftover in out.rglob(".*.tmp"):  # a write cut by the kill: age it past the staleness limit
        os.utime(leftover, (time.time() - 3600, time.time() - 3600))

    result = run("label", str(tmp_path / "images"), "--experts", "edge", "--out", str(out), "--visualize", "--batch-size", "1")
    redone = 150 - int(result.stdout.split("labelled ")[1].split(" ")[0])
    assert redone >= len(finished) - 1  # at most the image in flight when killed is redone
    files = list((out / "edge").glob("*.npz"))
    assert len(files) == 150
    for path in files:  # every file is complete and readable
        assert LabelStore(out).read("edge", path.name[: -len(".npz")]).data.shape == (256, 256, 1)
    unchanged = [n for n, t in finished.items() if (out / "edge" / n).stat().st_mtime_ns == t]
    assert len(unchanged) >= len(finished) - 1
    assert not list(out.rglob(".*.tmp"))


def test_corrupt_image_stops_with_its_name_and_leaves_no_partial_files(tmp_path):
    make_images(tmp_path / "images", 2)
    (tmp_path / "images" / "img001.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "store"
    result = run("label", str(tmp_path / "images"), "--experts", "edge", "--out", str(out),
                 "--batch-size", "1", check=False)
    assert result.returncode == 1
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and "img001.png" in error_lines[0]
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in (out / "edge").glob("*")) == ["img000.png.npz"]

    skipped = run("label", str(tmp_path / "images"), "--experts", "edge", "--out", str(out), "--skip-bad-images")
    assert "skipped 1 unreadable images" in skipped.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--experts", "edgy"], "did you mean 'edge'"),
        (["--experts", ""], "no experts given"),
    ],
)
def test_bad_expert_names_are_one_line_errors(tmp_path, args, message):
    make_images(tmp_path / "images", 1)
    result = run("label", str(tmp_path / "images"), *args, "--out", str(tmp_path / "store"), check=False)
    assert result.returncode == 1 and message in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_input_and_bad_manifest(tmp_path):
    result = run("label", str(tmp_path / "nowhere"), "--experts", "edge", "--out", str(tmp_path / "s"), check=False)
    assert result.returncode == 1 and "input not found" in result.stderr

    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"image": "a.png"}\n{"caption": "no image"}\n')
    result = run("label", str(manifest), "--experts", "edge", "--out", str(tmp_path / "s"), check=False)
    assert result.returncode == 1 and "m.jsonl:2" in result.stderr


def test_manifest_input_and_shards_fill_one_store(tmp_path):
    paths = make_images(tmp_path / "data" / "img", 4)
    manifest = tmp_path / "data" / "train.jsonl"
    manifest.write_text("".join(json.dumps({"image": f"img/{p.name}", "caption": "x"}) + "\n" for p in paths))
    out = tmp_path / "store"
    for shard in ("0/2", "1/2"):
        run("label", str(manifest), "--experts", "edge", "--out", str(out), "--shard", shard)
    assert sorted(p.name for p in (out / "edge" / "img").glob("*.npz")) == [f"{p.name}.npz" for p in paths]
