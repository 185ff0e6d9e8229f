"""`noise`, the control expert: registered like any other, its maps say nothing about the image
but are the same every time for the same image, so a label store can hold them."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from prismer_core.data.images import content_key
from prismer_core.data.label_store import LabelStore
from prismer_core.runner import ExpertRunner
from prismer_core.labeling import label_images
from prismer_core.registry import ExpertUnavailableError, load_registry


@pytest.fixture(scope="module")
def registry():
    return load_registry()


def picture(seed: int, size=(48, 40)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)


def noise_of(registry, images, **settings) -> list[np.ndarray]:
    runner = ExpertRunner(["noise"], registry=registry, settings={"noise": settings})
    return [out.data for out in runner(images, [f"{i}.png" for i in range(len(images))])["noise"]]


def test_noise_is_registered_through_the_entry_points_and_listed(registry, cli):
    entry = registry.entry("noise")
    assert (entry.plugin.name, entry.plugin.distribution) == ("noise", "prismer")  # the entry point, as a third party has one
    assert entry.spec.kind.value == "dense" and entry.spec.channels == 1
    assert "noise" in cli("experts", "list").stdout


def test_the_same_image_gets_the_same_map_and_another_image_another(registry):
    first, again, other, flat, flat_again = noise_of(registry, [picture(0), picture(0), picture(1),
                                                                np.zeros((48, 40, 3), np.uint8), np.zeros((48, 40, 3), np.uint8)])
    assert first.shape == (48, 40, 1) and first.dtype == np.float32
    assert np.array_equal(first, again) and np.array_equal(flat, flat_again)
    assert not np.allclose(first, other) and not np.allclose(first, flat)
    values = np.concatenate([first, other, flat]).ravel()
    assert values.min() >= -1 and values.max() <= 1
    assert abs(values.mean()) < 0.05 and abs(values.std() - 3**-0.5) < 0.02  # uniform on [-1, 1]
    # nothing of the image is in it: the map is as correlated with the pixels as with another image's
    grey = picture(0).mean(-1).ravel()
    assert abs(np.corrcoef(grey, first.ravel())[0, 1]) < 0.1


def test_settings_change_the_noise_and_cells_make_it_coarse(registry):
    base, reseeded, coarse = (noise_of(registry, [picture(3)], **s)[0] for s in ({}, {"seed": "7"}, {"cell": "8"}))
    assert not np.allclose(base, reseeded)
    assert np.array_equal(coarse[:8, :8], np.broadcast_to(coarse[0, 0], (8, 8, 1)))
    assert len(np.unique(coarse)) == 6 * 5  # 48×40 pixels in 8-pixel cells
    with pytest.raises(ExpertUnavailableError, match="cell must be at least 1 pixel, got 0"):
        registry.create("noise", cell="0")


def test_a_label_store_holds_noise_maps_that_equal_a_fresh_run(registry, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(picture(i)).save(folder / f"{i}.png")
    label_images(folder, ["noise"], tmp_path / "labels", show_progress=False)
    store = LabelStore(tmp_path / "labels")
    for i in range(3):
        stored = store.read("noise", content_key((folder / f"{i}.png").read_bytes())).data
        fresh = noise_of(registry, [np.asarray(Image.open(folder / f"{i}.png").convert("RGB"))])[0]
        assert np.allclose(stored, fresh, atol=1e-3)  # the store keeps dense maps in float16
