"""`edge` as a user calls it: edges lie on the borders of known shapes, nowhere else."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw

from prismer_core.runner import ExpertRunner
from prismer_core.registry import load_registry

SIZE = 128
KERNEL = np.ones((3, 3), np.uint8)


def grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), KERNEL, iterations=pixels) > 0


def shrink(mask: np.ndarray, pixels: int) -> np.ndarray:
    return cv2.erode(mask.astype(np.uint8), KERNEL, iterations=pixels) > 0


def shapes() -> tuple[np.ndarray, np.ndarray]:
    """An RGB image with a rectangle and a disc, and the mask of where the shapes are."""
    image = Image.new("RGB", (SIZE, SIZE), (30, 30, 30))
    mask = Image.new("L", (SIZE, SIZE), 0)
    for canvas, colour_a, colour_b in ((ImageDraw.Draw(image), (210, 60, 60), (60, 200, 90)), (ImageDraw.Draw(mask), 255, 255)):
        canvas.rectangle((16, 20, 56, 100), fill=colour_a)
        canvas.ellipse((70, 40, 114, 84), fill=colour_b)
    return np.asarray(image), np.asarray(mask) > 0


@pytest.fixture(scope="module")
def registry():
    return load_registry()


def run_edge(registry, image: np.ndarray, **settings) -> np.ndarray:
    runner = ExpertRunner(["edge"], registry=registry, settings={"edge": settings})
    output = runner([image], ["shapes.png"])["edge"][0]  # validated against the contract
    assert output.data.shape == (*image.shape[:2], 1) and output.data.dtype == np.float32
    return output.data[..., 0] > 0


@pytest.mark.parametrize("settings", [{}, {"low": "50", "high": "150"}])
def test_edges_lie_on_the_shape_borders(registry, settings):
    image, inside = shapes()
    edges = run_edge(registry, image, **settings)
    border = grow(inside, 2) & ~shrink(inside, 2)
    far_inside = shrink(inside, 4)
    far_outside = ~grow(inside, 4)

    assert edges.sum() > 100
    assert (edges & border).sum() / edges.sum() > 0.98  # edges are on the borders...
    assert not (edges & far_inside).any() and not (edges & far_outside).any()  # ...not inside or outside
    outline = inside & ~shrink(inside, 1)
    near_edge = grow(edges, 2)
    assert (outline & near_edge).sum() / outline.sum() > 0.9  # and they trace the whole outline


def test_flat_image_has_no_edges(registry):
    assert not run_edge(registry, np.full((64, 80, 3), 128, dtype=np.uint8)).any()


def test_bad_thresholds_make_edge_not_ready(registry):
    status = registry.experts["edge"].status_text(low="90", high="50")
    assert status.startswith("not ready") and "need 0 <= low <= high" in status
    status = registry.experts["edge"].status_text(low="x", high="9")
    assert "setting 'low' must be a number" in status


def test_hed_backend_loads_safetensors_and_pth_weights(registry, tmp_path):
    import torch
    from safetensors.torch import load_file

    import expert_models

    safetensors = expert_models.hed_weights(tmp_path / "ControlNetHED.safetensors")
    torch.save(load_file(str(safetensors)), tmp_path / "ControlNetHED.pth")  # the annotator's format
    image, _ = shapes()
    maps = []
    for weights in (safetensors, tmp_path / "ControlNetHED.pth"):
        runner = ExpertRunner(["edge"], registry=registry, settings={"edge": {"backend": "hed", "model": str(weights)}})
        (output,) = runner([image], ["shapes.png"])["edge"]  # validated: shape, float32, [-1, 1]
        assert output.data.shape == (SIZE, SIZE, 1) and output.data.std() > 0  # soft, not constant
        maps.append(output.data)
    np.testing.assert_array_equal(maps[0], maps[1])


def test_hed_without_weights_says_where_to_get_them(registry, monkeypatch, tmp_path):
    monkeypatch.setenv("PRISMER_WEIGHTS_DIR", str(tmp_path))
    status = registry.experts["edge"].status_text(backend="hed")
    assert status.startswith(f"not ready: no HED weights found in {tmp_path}")
    assert "ControlNetHED.pth" in status and "lllyasviel/Annotators" in status and "PRISMER_EDGE_MODEL" in status
