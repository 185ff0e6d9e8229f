"""The built-in experts through `prismer label`, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from prismer_core.data.label_store import LabelStore

PRISMER = [sys.executable, "-m", "prismer_cli.main"]


def street_sign(path, word: str, offset: int) -> None:
    """A photo-like test image: sky, a grey road, and a sign with a word on it."""
    image = Image.new("RGB", (240, 160), (120, 170, 230))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 110, 240, 160), fill=(90, 90, 95))
    draw.rectangle((30 + offset, 20, 200 + offset, 90), fill=(245, 245, 240), outline=(200, 30, 30), width=4)
    draw.text((45 + offset, 25), word, fill=(20, 20, 20), font=ImageFont.load_default(size=48))
    image.save(path)


def test_label_with_edge_and_ocr_writes_store_and_previews(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i, word in enumerate(["open", "exit"]):
        street_sign(images / f"sign{i}.png", word, offset=4 * i)
    out = tmp_path / "store"
    env = {**os.environ, "PRISMER_LOAD_PLUGINS": "edge,ocr"}
    result = subprocess.run(
        [*PRISMER, "label", str(images), "--experts", "edge,ocr", "--out", str(out), "--visualize"],
        capture_output=True, text=True, env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "labelled 2 images" in result.stdout

    meta = json.loads((out / "store.json").read_text())
    assert set(meta["experts"]) == {"edge", "ocr"} and meta["experts"]["ocr"]["has_instances"]
    store = LabelStore(out)
    for i, word in enumerate(["open", "exit"]):
        ocr = store.read("ocr", f"sign{i}.png")
        assert ocr.names == [word] and ocr.instances.max() == 1
        edge = store.read("edge", f"sign{i}.png")
        assert edge.data.shape == (160, 240, 1)
        assert edge.data[105:115, :, 0].max() == 1.0  # the road's border is an edge
        for expert in ("edge", "ocr"):
            preview = Image.open(out / "previews" / expert / f"sign{i}.png.png")
            assert preview.width > 2 * preview.height * 0.9  # the image and its map side by side
            assert np.asarray(preview).std() > 10  # not a blank picture
