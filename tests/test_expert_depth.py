"""`depth` loads a saved transformers model offline through its own code and labels a photo."""

from __future__ import annotations

import numpy as np
import pytest

import expert_models
from prismer_core.runner import ExpertRunner
from prismer_core.registry import load_registry
from prismer_experts.depth import Depth


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return expert_models.depth_anything(tmp_path_factory.mktemp("weights") / "depth")


def test_depth_on_photos_of_different_sizes_in_one_batch(model):
    runner = ExpertRunner(["depth"], registry=load_registry(), settings={"depth": {"model": str(model)}})
    images = [expert_models.photo((120, 160)), expert_models.photo((90, 60)), expert_models.photo((120, 160))]
    outputs = runner(images, ["a", "b", "c"])["depth"]  # validated against the contract
    for image, output in zip(images, outputs):
        assert output.data.shape == (*image.shape[:2], 1) and output.data.dtype == np.float32
        assert output.data.min() == pytest.approx(-1.0, abs=1e-6) and output.data.max() == pytest.approx(1.0, abs=1e-6)  # stretched per image
    np.testing.assert_allclose(outputs[0].data, outputs[2].data, atol=1e-5)  # batching changes nothing


def test_weights_dir_is_the_default_place(model, monkeypatch):
    monkeypatch.setenv("PRISMER_WEIGHTS_DIR", str(model.parent))
    assert Depth().readiness().ready  # finds $PRISMER_WEIGHTS_DIR/depth
    monkeypatch.setenv("PRISMER_DEPTH_MODEL", str(model.parent / "elsewhere"))
    readiness = Depth().readiness()  # an explicit setting is never second-guessed
    assert not readiness.ready and "folder" in readiness.reason and "does not exist" in readiness.reason


def test_not_ready_says_exactly_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("PRISMER_WEIGHTS_DIR", raising=False)
    readiness = Depth().readiness()
    assert readiness.reason == "no transformers depth-estimation model configured"
    assert "PRISMER_DEPTH_MODEL=" in readiness.fix and "--set depth.model=" in readiness.fix
    assert "$PRISMER_WEIGHTS_DIR/depth" in readiness.fix

    (tmp_path / "empty").mkdir()
    assert "has no config.json" in Depth(model=str(tmp_path / "empty")).readiness().reason

    readiness = Depth(model="prismer-tests/no-such-model").readiness()  # a hub id: looked up in the cache only
    assert "not in the Hugging Face cache" in readiness.reason and "nothing is downloaded" in readiness.reason
    assert "hf download prismer-tests/no-such-model" in readiness.fix
