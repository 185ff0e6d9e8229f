"""One crop and flip reach the image and every map: checked with maps derived from the image."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from prismer_core.data.dataset import TrainingData
from prismer_core.data.encoding import SampleEncoder
from prismer_core.data.images import content_key
from prismer_core.data.label_store import LabelStore
from prismer_core.data.labels import StoredLabels
from prismer_core.data.manifest import load_data
from prismer_core.data.transforms import PairedTransform
from prismer_core.experts.contract import DenseMap, ExpertKind, ExpertSpec, SemanticMap

PALETTE = np.array([[0, 0, 0], [230, 30, 30], [30, 200, 40], [40, 60, 230]], dtype=np.float32)


def scene(size: int = 120) -> np.ndarray:
    """Flat coloured blocks, left-right asymmetric, so any crop or flip shows."""
    image = Image.new("RGB", (size, size), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.rectangle((5, 10, 50, 100), fill=(230, 30, 30))
    draw.ellipse((60, 20, 110, 70), fill=(30, 200, 40))
    draw.rectangle((70, 80, 115, 115), fill=(40, 60, 230))
    return np.asarray(image)


def grey(rgb: np.ndarray) -> np.ndarray:
    """A dense map derived from the image: brightness in [-1, 1], H×W×1."""
    return (rgb.astype(np.float32).mean(axis=2, keepdims=True) / 127.5 - 1.0).astype(np.float32)


def colour_labels(rgb: np.ndarray) -> np.ndarray:
    """A label map derived from the image: index of the nearest palette colour."""
    distances = ((rgb[..., None, :].astype(np.float32) - PALETTE) ** 2).sum(-1)
    return distances.argmin(-1).astype(np.int32)


def derived_maps(image: np.ndarray) -> dict:
    labels = colour_labels(image)
    return {"grey": DenseMap(grey(image)), "colours": SemanticMap(labels, ["red", "green", "blue"], labels.copy())}


@pytest.mark.parametrize("hflip", [0.0, 1.0])
def test_crop_and_flip_reach_image_and_maps_alike(hflip):
    image = scene()
    transform = PairedTransform(64, train=True, crop_scale=(0.3, 0.6), hflip=hflip)
    out = transform(image, derived_maps(image), seed=7)
    assert out.flipped == (hflip == 1.0)

    rgb = (out.rgb.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    # the dense map went through the same crop: it equals the map derived from the new image
    assert np.abs(out.dense["grey"][0].numpy() - grey(rgb)[..., 0]).max() < 0.02
    # label and instance maps too, up to a pixel of border where bilinear and nearest differ
    labels = out.labels["colours"].numpy()
    assert (labels == colour_labels(rgb)).mean() > 0.97
    assert torch.equal(out.labels["colours"], out.instances["colours"])
    assert set(np.unique(labels)) <= {0, 1, 2, 3}  # nearest: no blended, invented labels

    # and it really was a crop (and a flip): it differs from resizing the whole image
    whole = PairedTransform(64, train=False)(image, {}, seed=7).rgb
    assert (out.rgb - whole).abs().mean() > 0.05


def test_the_same_seed_gives_the_same_crop_and_another_seed_another():
    image = scene()
    transform = PairedTransform(48, train=True, crop_scale=(0.3, 0.9), hflip=0.5)
    runs = [transform(image, derived_maps(image), seed=s) for s in (1, 1, 2)]
    assert torch.equal(runs[0].rgb, runs[1].rgb) and torch.equal(runs[0].labels["colours"], runs[1].labels["colours"])
    assert not torch.equal(runs[0].rgb, runs[2].rgb)


def test_training_data_reads_stored_maps_aligned_with_the_image(tmp_path):
    """Store → dataset → transform → normalise: the expert channel still matches the picture."""
    image = scene()
    Image.fromarray(image).save(tmp_path / "scene.png")
    (tmp_path / "train.jsonl").write_text(json.dumps({"image": "scene.png", "caption": "blocks on the left"}) + "\n")
    spec = ExpertSpec(name="grey", version="1", kind=ExpertKind.DENSE, channels=1)
    store = LabelStore(tmp_path / "store")
    store.open_for({"grey": spec}, {})
    store.write("grey", content_key((tmp_path / "scene.png").read_bytes()), DenseMap(grey(image)))

    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    samples = load_data(tmp_path / "train.jsonl").samples
    encoder = SampleEncoder(PairedTransform(56, True, (0.3, 0.7), hflip=1.0), mean, std, {"grey": spec})
    data = TrainingData(samples, encoder, StoredLabels(store, {"grey": spec}))
    item = data[(0, 11)]
    rgb = item.inputs.rgb[0] * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    expected = rgb.mean(0) * 2.0 - 1.0
    assert (item.inputs.experts["grey"][0, 0] - expected).abs().max() < 0.02  # float16 store + rounding
    assert item.target == "blocks on the right"  # flipped image, flipped words
