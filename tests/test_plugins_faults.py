"""A faulty third-party expert stops `prismer label` with an error naming the plugin and the
image, and leaves the label store as it was: finished files intact, nothing half-written.

The experts of the installed test package ``prismer-faulty`` (tests/plugin_helpers.py) return
valid maps except on images with a magenta top-left pixel; here that is img003, the second
image of the second batch, so the runner has to find it inside the batch.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from plugin_helpers import plugin_env, run_prismer, write_images
from prismer_core.data.label_store import LabelStore

FAULTS = {
    "faulty_raise": "predict() raised RuntimeError: cannot handle this picture",
    "faulty_shape": "data has shape (48, 63, 1), expected (48, 64, 1)",
    "faulty_dtype": "data must be a float32 numpy array, got array of float64",
    "faulty_range": "outside [-1, 1]",
    "faulty_nan": "data contains NaN or infinite values",
}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faulty-input")
    write_images(folder, 5, marked=[3])
    return folder


@pytest.mark.parametrize("expert", sorted(FAULTS))
def test_a_faulty_expert_stops_the_run_naming_plugin_and_image(expert, images, plugin_site, cli, tmp_path):
    out = tmp_path / "store"
    result = cli("label", images, "--experts", f"edge,{expert}", "--out", out, "--batch-size", "2", "--visualize",
                 site=plugin_site, check=False)

    assert result.exit_code == 1
    error = result.stderr.splitlines()[-1]  # after the progress bar
    assert error.startswith(f"Error: expert '{expert}' (from prismer-faulty 1.0.0) on image {images / 'img003.png'}: ")
    assert FAULTS[expert] in error and sum(line.startswith("Error:") for line in result.stderr.splitlines()) == 1

    # The first batch (img000, img001) was finished and is intact; the failing batch left nothing.
    store = LabelStore(out)
    done = {store.key_of(images / f"img00{i}.png") for i in (0, 1)}
    for name in ("edge", expert):
        assert store.keys(name) == done
        assert {p.stem for p in (out / "previews" / name).rglob("*.png")} == done
    brightness = store.read_file(expert, images / "img000.png").data
    assert brightness.shape == (48, 64, 1) and brightness.min() >= -1 and brightness.max() <= 1
    assert not list(out.rglob("*.tmp"))
    assert set(json.loads((out / "store.json").read_text())["experts"]) == {"edge", expert}


def test_the_store_left_by_a_faulty_run_is_resumed_by_a_good_one(images, plugin_site, tmp_path):
    """Both runs are real processes: the first one ends on the error, the second finishes the work."""
    out = tmp_path / "store"
    env = plugin_env(plugin_site)
    failed = run_prismer("label", str(images), "--experts", "edge,faulty_nan", "--out", str(out), "--batch-size", "2", env=env, check=False)
    assert failed.returncode == 1
    finished = {p: p.read_bytes() for p in (out / "edge").rglob("*.npz")}

    result = run_prismer("label", str(images), "--experts", "edge", "--out", str(out), "--batch-size", "2", env=env)
    assert "labelled 3 images" in result.stdout and "2 already done" in result.stdout
    assert {path: path.read_bytes() for path in finished} == finished  # not rewritten
    maps = [LabelStore(out).read_file("edge", images / f"img{i:03d}.png").data for i in range(5)]
    assert all(m.shape == (48, 64, 1) and np.isin(m, (-1.0, 1.0)).all() for m in maps)
