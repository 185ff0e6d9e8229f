"""`prismer label` as a user runs it: store layout, resume after a kill, bad input.

The commands run in this process (typer's runner); the kill test needs a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image, ImageDraw

from prismer_core.data.label_store import LabelStore

PRISMER = [sys.executable, "-m", "prismer_cli.main"]
ENV = {**os.environ, "PRISMER_LOAD_PLUGINS": "edge"}


def wait_for_files(folder: Path, count: int, limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    while len(list(folder.rglob("*.npz"))) < count and time.monotonic() < deadline:
        time.sleep(0.05)


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


@pytest.fixture
def run(cli):
    """``run("label", ...)``: the command in this process with only the edge expert loaded."""
    return lambda *args, check=True: cli(*args, load="edge", check=check)


def test_label_writes_store_and_previews(run, tmp_path):
    make_images(tmp_path / "images" / "sub", 3)
    out = tmp_path / "store"
    result = run("label", str(tmp_path / "images"), "--experts", "edge", "--out", str(out), "--visualize")
    assert "labelled 3 images" in result.stdout

    meta = json.loads((out / "store.json").read_text())
    assert meta["experts"]["edge"]["version"] == "1.0"
    store = LabelStore(out)
    first = tmp_path / "images" / "sub" / "img000.png"
    edge = store.read_file("edge", first)
    assert edge.data.shape == (96, 96, 1) and edge.data.dtype == np.float32
    assert edge.data.max() == pytest.approx(1.0) and edge.data.min() == pytest.approx(-1.0)
    assert store.images()[store.key_of(first)] == [str(first)]  # where it came from, for people
    preview = Image.open(store.preview_path("edge", store.key_of(first)))
    assert preview.width > preview.height  # image and map side by side
    assert not list(out.rglob("*.tmp"))

    again = run("label", str(tmp_path / "images"), "--experts", "edge", "--out", str(out), "--visualize")
    assert "labelled 0 images" in again.stdout and "3 already done" in again.stdout


def test_store_records_settings_and_refuses_to_mix_in_other_ones(run, tmp_path):
    make_images(tmp_path / "images", 2)
    out = tmp_path / "store"
    run("label", str(tmp_path / "images"), "--experts", "edge", "--out", str(out), "--set", "edge.low=50")
    assert LabelStore(out).settings("edge") == {"low": "50"}
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}

    make_images(tmp_path / "more", 1, size=80)[0].rename(tmp_path / "more" / "new.png")  # not a copy of one labelled
    other = run("label", str(tmp_path / "more"), "--experts", "edge", "--out", str(out), check=False)
    assert other.exit_code == 1
    assert "holds 'edge' labels made with low=50, but this run uses default settings" in other.stderr
    assert "Traceback" not in other.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing written

    same = run("label", str(tmp_path / "more"), "--experts", "edge", "--out", str(out), "--set", "edge.low=50")
    assert "labelled 1 images" in same.stdout


def test_killed_run_resumes_without_redoing_finished_images(run, tmp_path):
    make_images(tmp_path / "images", 150, size=256)
    out = tmp_path / "store"
    workers = 2
    command = [*PRISMER, "label", str(tmp_path / "images"), "--experts", "edge", "--out", str(out),
               "--visualize", "--batch-size", "1", "--workers", str(workers)]
    # its own process group, killed whole: the machine dies under the parent and its workers at once
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    wait_for_files(out / "edge", 10)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = {p: p.stat().st_mtime_ns for p in (out / "edge").rglob("*.npz")}
    assert 10 <= len(finished) < 150, "the kill should land midway"
    for leftover in out.rglob(".*.tmp"):  # a write cut by the kill: age it past the staleness limit
        os.utime(leftover, (time.time() - 3600, time.time() - 3600))

    result = run("label", str(tmp_path / "images"), "--experts", "edge", "--out", str(out), "--visualize", "--batch-size", "1")
    kept = 150 - int(result.stdout.split("labelled ")[1].split(" ")[0])
    assert kept >= len(finished) - workers  # at most the image each worker had in flight is redone
    files = list((out / "edge").rglob("*.npz"))
    assert len(files) == 150
    for path in files:  # every file is complete and readable
        assert LabelStore(out).read("edge", path.stem).data.shape == (256, 256, 1)
    unchanged = [p for p, t in finished.items() if p.stat().st_mtime_ns == t]
    assert len(unchanged) >= len(finished) - workers
    assert not list(out.rglob(".*.tmp"))


def test_workers_of_a_killed_parent_stop_writing(tmp_path):
    make_images(tmp_path / "images", 150, size=256)
    out = tmp_path / "store"
    command = [*PRISMER, "label", str(tmp_path / "images"), "--experts", "edge", "--out", str(out),
               "--batch-size", "1", "--workers", "2"]
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_files(out / "edge", 4)
    workers = psutil.Process(process.pid).children(recursive=True)
    assert workers, "--workers 2 labels in child processes"
    process.send_signal(signal.SIGKILL)  # the parent alone: nothing is left to terminate the workers
    process.wait()
    _, alive = psutil.wait_procs(workers, timeout=60)
    for worker in alive:
        worker.kill()
    assert not alive, "orphaned labelling workers kept running after their parent was killed"
    assert len(list((out / "edge").rglob("*.npz"))) < 150
    assert not list(out.rglob(".*.tmp"))  # each worker stopped between whole batches


def test_corrupt_image_stops_with_its_name_and_leaves_no_partial_files(run, tmp_path):
    make_images(tmp_path / "images", 2)
    (tmp_path / "images" / "img001.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "store"
    result = run("label", str(tmp_path / "images"), "--experts", "edge", "--out", str(out),
                 "--batch-size", "1", check=False)
    assert result.exit_code == 1
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and "img001.png" in error_lines[0]
    assert "Traceback" not in result.stderr
    assert LabelStore(out).keys("edge") == {LabelStore.key_of(tmp_path / "images" / "img000.png")}

    skipped = run("label", str(tmp_path / "images"), "--experts", "edge", "--out", str(out), "--skip-bad-images")
    assert "skipped 1 unreadable images" in skipped.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--experts", "edgy"], "did you mean 'edge'"),
        (["--experts", ""], "no experts given"),
    ],
)
def test_bad_expert_names_are_one_line_errors(run, tmp_path, args, message):
    make_images(tmp_path / "images", 1)
    result = run("label", str(tmp_path / "images"), *args, "--out", str(tmp_path / "store"), check=False)
    assert result.exit_code == 1 and message in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_input_and_bad_manifest(run, tmp_path):
    result = run("label", str(tmp_path / "nowhere"), "--experts", "edge", "--out", str(tmp_path / "s"), check=False)
    assert result.exit_code == 1 and "data not found" in result.stderr

    manifest = tmp_path / "m.jsonl"
    make_images(tmp_path, 1)[0].rename(tmp_path / "a.png")
    manifest.write_text('{"image": "a.png"}\n{"caption": "no image"}\n')
    result = run("label", str(manifest), "--experts", "edge", "--out", str(tmp_path / "s"), check=False)
    assert result.exit_code == 1 and "m.jsonl:2" in result.stderr


def test_manifest_input_and_shards_fill_one_store(run, tmp_path):
    paths = make_images(tmp_path / "data" / "img", 4)
    manifest = tmp_path / "data" / "train.jsonl"
    manifest.write_text("".join(json.dumps({"image": f"img/{p.name}", "caption": "x"}) + "\n" for p in paths))
    out = tmp_path / "store"
    for shard in ("0/2", "1/2"):
        run("label", str(manifest), "--experts", "edge", "--out", str(out), "--shard", shard)
    assert LabelStore(out).keys("edge") == {LabelStore.key_of(p) for p in paths}


def test_coco_vqav2_and_tar_shards_label_by_content_once(run, tmp_path):
    """Every format the reader knows can be labelled; an image listed by several of them (or
    twice in one) is labelled once, and found by content whatever path reaches it."""
    import tarfile

    paths = make_images(tmp_path / "coco" / "val2014", 3)
    for index, path in enumerate(paths):
        path.rename(path.with_name(f"COCO_val2014_{index:012d}.jpg"))
    coco = tmp_path / "captions_val2014.json"
    coco.write_text(json.dumps({"images": [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in range(3)],
                                "annotations": [{"image_id": i % 3, "caption": "x"} for i in range(6)]}))
    questions = tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json"
    questions.write_text(json.dumps({"data_subtype": "val2014", "questions": [{"image_id": 1, "question": "q?", "question_id": 7}]}))
    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as archive:
        archive.add(tmp_path / "coco" / "val2014" / "COCO_val2014_000000000002.jpg", "sample2.jpg")
        make_images(tmp_path / "extra", 1, size=64)  # not one of the COCO images
        archive.add(tmp_path / "extra" / "img000.png", "sample9.png")
    out = tmp_path / "store"
    first = run("label", coco, "--experts", "edge", "--out", out, "--image-root", tmp_path / "coco" / "val2014")
    assert "labelled 3 images" in first.stdout
    again = run("label", questions, "--experts", "edge", "--out", out, "--image-root", tmp_path / "coco")
    assert "labelled 0 images" in again.stdout and "1 already done" in again.stdout
    tar = run("label", shard, "--experts", "edge", "--out", out)
    assert "labelled 1 images" in tar.stdout and "1 already done" in tar.stdout  # sample2 is a COCO image
    assert len(LabelStore(out).keys("edge")) == 4


def store_contents(store: Path) -> dict[str, bytes]:
    """Every label and preview file of a store, by its path inside it."""
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.suffix in (".npz", ".png")}


def test_two_workers_fill_the_store_one_process_fills(run, tmp_path):
    make_images(tmp_path / "images", 12)
    one, two = tmp_path / "one", tmp_path / "two"
    run("label", str(tmp_path / "images"), "--experts", "edge", "--out", str(one), "--visualize", "--batch-size", "2", "--workers", "1")
    result = run("label", str(tmp_path / "images"), "--experts", "edge", "--out", str(two), "--visualize", "--batch-size", "2", "--workers", "2")
    assert "labelled 12 images" in result.stdout and "24 files written" in result.stdout
    assert store_contents(two) == store_contents(one) and len(store_contents(one)) == 24
    assert sorted(LabelStore(two).images()) == sorted(LabelStore(one).images())


def test_a_killed_two_worker_run_resumes_to_the_same_store(run, tmp_path):
    make_images(tmp_path / "images", 120, size=256)
    reference, out = tmp_path / "reference", tmp_path / "store"
    run("label", str(tmp_path / "images"), "--experts", "edge", "--out", str(reference), "--batch-size", "1", "--workers", "1")
    command = [*PRISMER, "label", str(tmp_path / "images"), "--experts", "edge", "--out", str(out),
               "--batch-size", "1", "--workers", "2"]
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 180
    while len(list(out.rglob("*.npz"))) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the parent and both workers, at once
    process.wait()
    killed_with = len(list(out.rglob("*.npz")))
    assert 10 <= killed_with < 120, "the kill should land midway"
    for leftover in out.rglob(".*.tmp"):  # writes cut by the kill: age them past the staleness limit
        os.utime(leftover, (time.time() - 3600, time.time() - 3600))

    result = run("label", str(tmp_path / "images"), "--experts", "edge", "--out", str(out), "--batch-size", "1", "--workers", "2")
    assert int(result.stdout.split("labelled ")[1].split(" ")[0]) <= 120 - killed_with + 2  # at most one in flight per worker redone
    assert store_contents(out) == store_contents(reference)
    assert set(LabelStore(out).images()) == set(LabelStore(reference).images())
    assert not list(out.rglob(".*.tmp"))


def test_labels_written_just_before_a_kill_get_their_index_line_on_resume(run, tmp_path):
    """A kill between an image's label files and its index line: the resumed run notes the image."""
    make_images(tmp_path / "images", 3)
    out = tmp_path / "store"
    run("label", str(tmp_path / "images"), "--experts", "edge", "--out", str(out))
    index = out / "images.jsonl"
    lines = index.read_text().splitlines()
    index.write_text("\n".join(lines[:-1]) + "\n")  # the last image's line never written
    result = run("label", str(tmp_path / "images"), "--experts", "edge", "--out", str(out))
    assert "labelled 0 " in result.stdout
    assert set(LabelStore(out).images()) == LabelStore(out).keys("edge") and len(LabelStore(out).keys("edge")) == 3
    run("label", str(tmp_path / "images"), "--experts", "edge", "--out", str(out))
    assert len(index.read_text().splitlines()) == 3  # noted once, not again on every resume


def test_a_bad_image_in_one_worker_stops_all_with_its_name(run, tmp_path):
    make_images(tmp_path / "images", 8)
    (tmp_path / "images" / "img005.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "store"
    result = run("label", str(tmp_path / "images"), "--experts", "edge", "--out", str(out), "--batch-size", "1", "--workers", "2", check=False)
    assert result.exit_code == 1
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and "img005.png" in error_lines[0] and "Traceback" not in result.stderr
    assert not list(out.rglob(".*.tmp"))
    assert LabelStore.key_of(tmp_path / "images" / "img005.png") not in LabelStore(out).keys("edge")
