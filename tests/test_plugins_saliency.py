"""The example third-party package, plugins/prismer-saliency, pip-installed and used through the CLI.

(Its own unit tests run from its folder: `make test` does that.)
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image


from prismer_core.data.label_store import LabelStore


def test_installed_example_plugin_labels_what_stands_out(plugin_site, cli, tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "images"
    folder.mkdir()
    discs = {}
    for i, centre in enumerate([(20, 70), (60, 25)]):
        noise = cv2.GaussianBlur(rng.normal(0, 1, (80, 100, 3)).astype(np.float32), (0, 0), 3)
        image = np.clip(110 + 25 * noise / noise.std(), 0, 255).astype(np.uint8)
        yy, xx = np.mgrid[:80, :100]
        discs[f"scene{i}.png"] = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= 8**2
        image[discs[f"scene{i}.png"]] = (240, 230, 40)
        Image.fromarray(image).save(folder / f"scene{i}.png")

    out = tmp_path / "store"
    result = cli("label", folder, "--experts", "saliency,edge", "--out", out, "--visualize", site=plugin_site)
    assert "labelled 2 images" in result.stdout

    store = LabelStore(out)
    assert store.experts()["saliency"]["plugin"] == "prismer-saliency 1.0.0"
    for key, disc in discs.items():
        saliency = store.read_file("saliency", folder / key).data[..., 0]
        assert saliency.shape == (80, 100)
        assert saliency[disc].mean() > saliency[~disc].mean() + 0.5
        assert store.preview_path("saliency", store.key_of(folder / key)).exists()
