"""The built-in experts through `prismer label`, as a user runs it."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

import expert_models
from prismer_core.data.label_store import LabelStore
from prismer_experts.vocabularies import ADE20K_CLASSES, COCO_CLASSES

SIX = "depth,normal,edge,seg,objdet,ocr"


def street_sign(path, word: str, offset: int) -> None:
    """A photo-like test image: sky, a grey road, and a sign with a word on it."""
    image = Image.new("RGB", (240, 160), (120, 170, 230))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 110, 240, 160), fill=(90, 90, 95))
    draw.rectangle((30 + offset, 20, 200 + offset, 90), fill=(245, 245, 240), outline=(200, 30, 30), width=4)
    draw.text((45 + offset, 25), word, fill=(20, 20, 20), font=ImageFont.load_default(size=48))
    image.save(path)


def test_label_with_edge_and_ocr_writes_store_and_previews(tmp_path, cli):
    images = tmp_path / "images"
    images.mkdir()
    for i, word in enumerate(["open", "exit"]):
        street_sign(images / f"sign{i}.png", word, offset=4 * i)
    out = tmp_path / "store"
    result = cli("label", images, "--experts", "edge,ocr", "--out", out, "--visualize", load="edge,ocr")
    assert "labelled 2 images" in result.stdout

    meta = json.loads((out / "store.json").read_text())
    assert set(meta["experts"]) == {"edge", "ocr"} and meta["experts"]["ocr"]["has_instances"]
    store = LabelStore(out)
    for i, word in enumerate(["open", "exit"]):
        ocr = store.read_file("ocr", images / f"sign{i}.png")
        assert ocr.names == [word] and ocr.instances.max() == 1
        edge = store.read_file("edge", images / f"sign{i}.png")
        assert edge.data.shape == (160, 240, 1)
        assert edge.data[105:115, :, 0].max() == 1.0  # the road's border is an edge
        for expert in ("edge", "ocr"):
            preview = Image.open(store.preview_path(expert, store.key_of(images / f"sign{i}.png")))
            assert preview.width > 2 * preview.height * 0.9  # the image and its map side by side
            assert np.asarray(preview).std() > 10  # not a blank picture


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """Tiny saved models for every expert that needs weights, as a user would configure them."""
    root = tmp_path_factory.mktemp("weights")
    with pytest.MonkeyPatch.context() as patch:  # ultralytics: no network probe, settings kept here
        patch.setenv("YOLO_OFFLINE", "1")
        patch.setenv("YOLO_CONFIG_DIR", str(root / "yolo-config"))
        yield {
            "depth": expert_models.depth_anything(root / "depth"),
            "seg": expert_models.mask2former_ade(root / "seg"),
            "objdet": expert_models.yolo_checkpoint(root / "yolov8n.pt"),
            "env": dict(os.environ),
        }


def test_experts_list_is_truthful_about_weights(tiny_weights, tmp_path, cli, monkeypatch):
    def statuses() -> dict[str, str]:
        rows = json.loads(cli("experts", "list", "--json", load=SIX).stdout)
        return {row["name"]: row["status"] for row in rows}

    monkeypatch.setenv("PRISMER_WEIGHTS_DIR", str(tmp_path))
    before = statuses()
    assert set(before) == set(SIX.split(","))
    assert before["edge"] == before["ocr"] == "ready"  # no weights needed
    assert before["normal"].startswith("not ready: needs expert 'depth'")  # derived from depth
    for name, variable in (("depth", "PRISMER_DEPTH_MODEL"), ("seg", "PRISMER_SEG_MODEL"), ("objdet", "PRISMER_OBJDET_MODEL")):
        assert before[name].startswith("not ready") and variable in before[name]

    for name in ("depth", "seg", "objdet"):
        monkeypatch.setenv(f"PRISMER_{name.upper()}_MODEL", str(tiny_weights[name]))
    assert set(statuses().values()) == {"ready"}


def test_label_with_all_six_experts_end_to_end(tiny_weights, tmp_path, cli, monkeypatch):
    images = tmp_path / "images"
    images.mkdir()
    street_sign(images / "sign.png", "stop", offset=0)
    Image.fromarray(expert_models.photo((240, 320))).save(images / "bus.jpg")
    out = tmp_path / "store"
    for name, value in {**tiny_weights["env"], "PRISMER_DEPTH_MODEL": str(tiny_weights["depth"])}.items():
        monkeypatch.setenv(name, value)
    result = cli("label", images, "--experts", SIX, "--out", out, "--visualize",
                 "--set", f"seg.model={tiny_weights['seg']}", "--set", f"objdet.model={tiny_weights['objdet']}",
                 "--set", "objdet.min_score=0", "--set", "objdet.image_size=160",  # random weights: keep every box
                 load=SIX)
    assert "labelled 2 images" in result.stdout

    store = LabelStore(out)
    assert set(json.loads((out / "store.json").read_text())["experts"]) == set(SIX.split(","))
    for name, size in (("sign.png", (160, 240)), ("bus.jpg", (320, 240))):
        key = store.key_of(images / name)
        assert store.read("depth", key).data.shape == (*size, 1)
        assert store.read("normal", key).data.shape == (*size, 3)
        assert store.read("edge", key).data.shape == (*size, 1)
        assert set(store.read("seg", key).names) <= set(ADE20K_CLASSES)
        objdet = store.read("objdet", key)
        assert set(objdet.names) <= set(COCO_CLASSES) and objdet.instances.max() >= 1
        for expert in SIX.split(","):
            assert store.preview_path(expert, key).is_file()
    assert store.read_file("ocr", images / "sign.png").names == ["stop"]
