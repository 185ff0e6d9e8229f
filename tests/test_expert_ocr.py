"""`ocr` as a user calls it: it reads back words rendered into an image, within the contract."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from prismer_core.runner import ExpertRunner
from prismer_core.registry import load_registry
from prismer_experts.ocr import TextBox, text_boxes_to_map


def render(words: dict[str, tuple[int, int]], size=(360, 220)) -> tuple[np.ndarray, dict[str, tuple[int, int, int, int]]]:
    """Dark words on a light page; returns the image and each word's ink bounding box."""
    image = Image.new("RGB", size, (250, 250, 245))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=64)
    boxes = {}
    for key, position in words.items():
        draw.text(position, key.split("#")[0], fill=(15, 15, 15), font=font)
        boxes[key] = draw.textbbox(position, key.split("#")[0], font=font)
    return np.asarray(image), boxes


@pytest.fixture(scope="module")
def runner():
    return ExpertRunner(["ocr"], registry=load_registry())


def test_ocr_reads_a_rendered_word_over_its_box(runner):
    image, boxes = render({"Prism": (30, 60)})
    output = runner([image], ["prism.png"])["ocr"][0]  # validated against the contract

    assert output.names == ["prism"]  # lower-cased
    assert output.labels.shape == image.shape[:2] and output.labels.dtype == np.int32
    left, top, right, bottom = boxes["Prism"]
    ink = (image[..., 0] < 128)
    assert (output.labels[ink] == 1).mean() > 0.95  # the word's ink lies inside its label
    labelled = output.labels > 0
    assert labelled[top - 8 : bottom + 8, left - 8 : right + 8].sum() == labelled.sum()  # and nothing else
    assert set(np.unique(output.instances)) == {0, 1}
    assert np.array_equal(output.instances > 0, labelled)


def test_same_word_twice_shares_a_name_but_not_an_instance(runner):
    image, _ = render({"stop#1": (20, 10), "stop#2": (170, 120)})
    output = runner([image], ["stop.png"])["ocr"][0]
    assert output.names == ["stop"]
    assert set(np.unique(output.instances)) == {0, 1, 2}
    first, second = (np.argwhere(output.instances == i).mean(axis=0) for i in (1, 2))
    assert first[0] < 110 < second[0]  # one box per line, top to bottom


def test_blank_page_has_no_text(runner):
    output = runner([np.full((64, 96, 3), 255, dtype=np.uint8)], ["blank.png"])["ocr"][0]
    assert output.names == [] and not output.labels.any()


def test_text_boxes_are_filled_rotated():
    diamond = TextBox(np.array([[20, 5], [35, 20], [20, 35], [5, 20]], dtype=np.float32), "  Hello   World ", 0.9)
    output = text_boxes_to_map(40, 40, [diamond, TextBox(np.zeros((4, 2)), " ", 0.9)])
    assert output.names == ["hello world"]  # empty text dropped, whitespace collapsed
    assert output.labels[20, 20] == 1 and output.labels[6, 6] == 0  # the corner of its bounding box stays empty
    assert output.instances.max() == 1


def test_paddleocr_backend_says_what_to_do(monkeypatch):
    monkeypatch.setenv("PRISMER_OCR_BACKEND", "paddleocr")
    monkeypatch.delenv("PRISMER_WEIGHTS_DIR", raising=False)
    status = load_registry().experts["ocr"].status_text()
    assert status.startswith("not ready: backend paddleocr")
    if importlib.util.find_spec("paddleocr") is None:  # the shared environment cannot hold it
        assert "prismer[ocr-paddle]" in status and "separate virtual environment" in status
    else:
        assert "det_model_dir for model PP-OCRv5_mobile_det: no folder configured" in status
    status = load_registry().experts["ocr"].status_text(backend="tesseract")
    assert "backend must be one of rapidocr, paddleocr" in status


def test_small_images_are_detected_at_a_capped_upscale(runner):
    """rapidocr would run its detector on a 736 px short side for any image; the reader caps the
    upscale (2x by default) and still reads the word in a small image."""
    image, _ = render({"Lamp": (12, 14)}, size=(200, 100))
    image = np.asarray(Image.fromarray(image).resize((100, 50)))  # a 50 px tall image: 2x is 100, not 736
    output = runner([image], ["small.png"])["ocr"][0]
    reader = runner.experts["ocr"].reader
    assert output.names == ["lamp"]
    assert reader.engine.text_det.preprocess_op.limit_side_len == 100  # what the detector resized to
    assert reader.detection_side(1080, 1920) == 736  # large images: the engine's own size
