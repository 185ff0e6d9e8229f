"""Training data as users have it: JSONL, COCO captions, VQAv2 pairs, BLIP-style lists, tar
shards, read by the one reader; bad rows; the demo set."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prismer_core.demo.scenes import COLUMNS, generate_demo
from prismer_core.data.images import TarMember
from prismer_core.data.manifest import BadRowError, ManifestError, load_data, read_images
from prismer_core.data.transforms import swap_left_right


def pixels(sample) -> np.ndarray:
    return sample.image.load().pixels


def save_image(path: Path, colour=(200, 30, 30), size=32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_jsonl_rows_give_samples_per_task_with_paths_relative_to_the_manifest(tmp_path):
    save_image(tmp_path / "data" / "img" / "a.png")
    save_image(tmp_path / "data" / "img" / "b.png", (20, 20, 200))
    manifest = write_jsonl(tmp_path / "data" / "train.jsonl", [
        {"image": "img/a.png", "caption": "a red square"},
        {"image": "img/a.png", "question": "what colour is it?", "answer": "red"},
        {"image": "img/b.png", "question": "what colour?", "answers": ["blue", "blue", "navy"], "caption": "blue"},
    ])
    both = load_data(manifest, ("caption", "vqa"))
    assert [(s.task, s.where.rsplit(":", 1)[1]) for s in both.samples] == [
        ("caption", "1"), ("vqa", "2"), ("caption", "3"), ("vqa", "3")]
    assert both.samples[3].answers == ("blue", "blue", "navy")
    assert both.samples[1].answers == ("red",)
    # the images `prismer label MANIFEST` labels, under the same content keys
    assert [r.name for r in read_images(manifest)] == ["img/a.png", "img/b.png"]
    assert {s.image.load().key for s in both.samples} == {r.load().key for r in read_images(manifest)}
    assert pixels(both.samples[0])[0, 0].tolist() == [200, 30, 30]

    # a question row is not a bad row of a caption run over a mixed manifest: it is not for it
    captions = load_data(manifest, ("caption",))
    assert captions.count("caption") == 2 and captions.count("vqa") == 0 and not captions.bad_rows


@pytest.mark.parametrize("row, reason", [
    ({"caption": "no image"}, "missing key 'image'"),
    ({"image": "a.png"}, "missing key 'caption'"),
    ({"image": "a.png", "caption": ""}, "'caption' must be a non-empty string"),
    ({"image": "missing.png", "caption": "x"}, "image not found"),
    ({"image": "empty.png", "caption": "x"}, "is empty"),
    ('{"image": "a.png", "caption": ', "not valid JSON"),
    ([1, 2], "expected a JSON object"),
])
def test_a_bad_row_stops_the_load_naming_file_and_line(tmp_path, row, reason):
    save_image(tmp_path / "a.png")
    (tmp_path / "empty.png").write_bytes(b"")
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"image": "a.png", "caption": "fine"}, row])
    with pytest.raises(BadRowError, match=f"m.jsonl:2: .*{reason}"):
        load_data(manifest, ("caption",))
    skipped = load_data(manifest, ("caption",), on_bad_row="skip")
    assert len(skipped.samples) == 1 and len(skipped.bad_rows) == 1


def test_vqa_rows_need_question_and_answers(tmp_path):
    save_image(tmp_path / "a.png")
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"image": "a.png", "question": "q?", "answer": "yes"},
        {"image": "a.png", "question": "q?"},
        {"image": "a.png", "question": "q?", "answer": []},
        {"image": "a.png", "answer": "yes"},
    ])
    data = load_data(manifest, ("vqa",), on_bad_row="skip")
    assert [str(r).split(": ", 1)[1] for r in data.bad_rows] == [
        "missing key 'answer'", "'answer' must be a non-empty string or a list of them", "missing key 'question'"]


def test_empty_or_useless_manifests_are_refused(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ManifestError, match="empty.jsonl is an empty file"):
        load_data(tmp_path / "empty.jsonl")
    write_jsonl(tmp_path / "bad.jsonl", [{"image": "nothing.png", "caption": "x"}])
    with pytest.raises(ManifestError, match="holds no usable caption samples; 1 bad rows, the first: .*bad.jsonl:1"):
        load_data(tmp_path / "bad.jsonl", on_bad_row="skip")
    with pytest.raises(ManifestError, match="data not found"):
        load_data(tmp_path / "nowhere.jsonl")


def test_coco_captions_json(tmp_path):
    save_image(tmp_path / "train2014" / "COCO_1.jpg")
    coco = tmp_path / "annotations" / "captions.json"
    coco.parent.mkdir()
    coco.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "COCO_1.jpg"}],
        "annotations": [{"image_id": 1, "caption": "A red square."}, {"image_id": 1, "caption": "Red."},
                        {"image_id": 7, "caption": "orphan"}],
    }))
    data = load_data(coco, ("caption",), on_bad_row="skip", image_root=tmp_path / "train2014")
    assert [s.caption for s in data.samples] == ["A red square.", "Red."]
    assert [str(r) for r in data.bad_rows] == [f"{coco}:annotations[2]: image_id 7 is not in 'images'"]
    assert pixels(data.samples[0]).shape == (32, 32, 3)


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def _png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_vqav2_questions_with_their_annotations_beside_them(tmp_path):
    root = tmp_path / "coco"
    save_image(root / "val2014" / "COCO_val2014_000000000042.jpg")
    questions = tmp_path / "vqa" / "v2_OpenEnded_mscoco_val2014_questions.json"
    questions.parent.mkdir()
    questions.write_text(json.dumps({"data_subtype": "val2014", "questions": [
        {"image_id": 42, "question": "What colour is it?", "question_id": 420},
        {"image_id": 42, "question": "Is it round?", "question_id": 421}]}))
    # `prismer label` needs the images only: no annotations yet
    assert [r.name for r in read_images(questions, image_root=root)] == ["val2014/COCO_val2014_000000000042.jpg"]
    with pytest.raises(ManifestError, match="v2_mscoco_val2014_annotations.json beside them"):
        load_data(questions, ("vqa",), image_root=root)
    (tmp_path / "vqa" / "v2_mscoco_val2014_annotations.json").write_text(json.dumps({"annotations": [
        {"question_id": 420, "question_type": "what color", "answers": [{"answer": "red"}, {"answer": "red"}]},
        {"question_id": 421, "question_type": "is the", "answers": [{"answer": "no"}]}]}))
    data = load_data(questions, ("vqa",), image_root=root)
    assert [(s.question, s.answers, s.question_type) for s in data.samples] == [
        ("What colour is it?", ("red", "red"), "what color"), ("Is it round?", ("no",), "is the")]
    assert pixels(data.samples[0]).shape == (32, 32, 3)


def test_blip_style_json_lists(tmp_path):
    save_image(tmp_path / "img" / "a.png")
    blip = tmp_path / "coco_karpathy_test.json"
    blip.write_text(json.dumps([
        {"image": "img/a.png", "caption": ["a red square.", "red."], "image_id": "coco_1"},
        {"image": "img/a.png", "question": "what colour?", "answer": ["red", "red"], "dataset": "vqa"},
        {"image": "img/missing.png", "caption": "x"},
    ]))
    data = load_data(blip, ("caption", "vqa"), on_bad_row="skip")
    assert [(s.task, s.caption or s.answers) for s in data.samples] == [
        ("caption", "a red square."), ("caption", "red."), ("vqa", ("red", "red"))]
    assert [str(r) for r in data.bad_rows] == [f"{blip}:[2]: image not found: {tmp_path / 'img' / 'missing.png'}"]


def test_webdataset_tar_shards_are_read_in_place(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    with tarfile.open(shards / "000.tar", "w") as archive:
        _add(archive, "s1.png", _png((255, 0, 0)))
        _add(archive, "s1.txt", b"a red picture")
        _add(archive, "s2.png", _png((0, 0, 255)))
        _add(archive, "s2.json", json.dumps({"question": "colour?", "answer": "blue", "caption": "blue"}).encode())
        _add(archive, "s3.txt", b"text without an image")
        _add(archive, "s4.png", b"")
    data = load_data(shards, ("caption", "vqa"), on_bad_row="skip")
    by_task = {(s.name, s.task): s for s in data.samples}
    assert set(by_task) == {("000.tar/s1.png", "caption"), ("000.tar/s2.png", "caption"), ("000.tar/s2.png", "vqa")}
    assert by_task[("000.tar/s1.png", "caption")].caption == "a red picture"
    assert by_task[("000.tar/s2.png", "vqa")].answers == ("blue",)
    assert isinstance(by_task[("000.tar/s2.png", "vqa")].image, TarMember)
    assert pixels(by_task[("000.tar/s2.png", "vqa")])[0, 0].tolist() == [0, 0, 255]
    # s1 has no question: a bad row for vqa only; s3 has no image; s4's image is empty
    reasons = sorted(str(r).split(": ", 1)[1] for r in data.bad_rows)
    assert reasons[0].startswith("image member s4.png is empty") and any("no image member" in r for r in reasons)


def test_demo_data_is_deterministic_and_consistent(tmp_path):
    first = generate_demo(tmp_path / "a", n=12, seed=3, size=96)
    generate_demo(tmp_path / "b", n=12, seed=3, size=96)
    generate_demo(tmp_path / "c", n=12, seed=4, size=96)

    def digest(root: Path) -> str:
        files = sorted(p for p in root.rglob("*") if p.is_file())
        return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()

    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")
    assert first.images == {"train": 10, "val": 1, "test": 1}

    data = load_data([first.manifest(s) for s in ("train", "val", "test")], ("caption", "vqa"))
    assert data.count("caption") == 12 and data.count("vqa") >= 12
    for sample in data.samples:
        assert pixels(sample).shape == (96, 96, 3)
    rows = [json.loads(line) for line in first.manifest("train").read_text().splitlines()]
    count = {r["image"]: r["answer"] for r in rows if r.get("type") == "count"}
    for row in rows:
        if "caption" in row:  # the caption names as many shapes as the count answer says
            assert row["caption"].split(" ")[0] == count[row["image"]]
        if row.get("type") == "position":
            assert row["answer"] in COLUMNS and f"{row['answer']}" in next(
                r["caption"] for r in rows if r["image"] == row["image"] and "caption" in r)
        if "caption" in row:  # every printed word the caption names is asked for twice
            words = [part.split(" ")[0] for part in row["caption"].split("with the word ")[1:]]
            asked = [r["answer"] for r in rows if r["image"] == row["image"] and r.get("type") == "word"]
            assert sorted(asked) == sorted(words * 2)
    assert any(r.get("type") == "word" for r in rows)


def test_demo_words_are_readable_by_the_ocr_expert(tmp_path):
    """The printed words carry information the OCR expert can extract."""
    from prismer_core.runner import ExpertRunner
    from prismer_core.registry import load_registry

    generate_demo(tmp_path, n=40, seed=0, size=192)
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    words = [(r["image"], r["answer"]) for r in rows if r.get("type") == "word"][:6]
    assert len(words) == 6
    runner = ExpertRunner(["ocr"], registry=load_registry())
    images = [np.asarray(Image.open(tmp_path / image).convert("RGB")) for image, _ in words]
    outputs = runner(images, [image for image, _ in words])["ocr"]
    read = sum(word in out.names for (_, word), out in zip(words, outputs))
    assert read >= 5, [(w, o.names) for (_, w), o in zip(words, outputs)]


def test_flipped_text_swaps_left_and_right():
    assert swap_left_right("a red circle on the left and a cat on the right") == \
        "a red circle on the right and a cat on the left"
    assert swap_left_right("Left? leftover") == "Right? leftover"


def test_data_cli_demo_and_check(cli, tmp_path):
    result = cli("data", "demo", "--out", tmp_path / "demo", "--n", "10", "--size", "64", load="edge,ocr")
    assert "train: 8 images" in result.stdout
    ok = cli("data", "check", tmp_path / "demo" / "train.jsonl", "--task", "caption,vqa", load="edge,ocr")
    assert "0 bad rows" in ok.stdout

    manifest = tmp_path / "demo" / "train.jsonl"
    lines = manifest.read_text().splitlines()
    (tmp_path / "demo" / "images" / "train" / "00001.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    lines[0] = json.dumps({"image": "images/train/00000.png"})
    manifest.write_text("\n".join(lines) + "\n")
    bad = cli("data", "check", manifest, "--task", "caption", load="edge,ocr", check=False)
    assert bad.exit_code == 1
    assert f"{manifest}:1: missing key 'caption'" in bad.stderr
    assert "00001.png" in bad.stderr and "cannot read image" in bad.stderr
