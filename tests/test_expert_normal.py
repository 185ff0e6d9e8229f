"""`normal`: geometric normals from a known depth map, the learned Marigold path, and the
depth -> normal chain, through the Python API a user calls."""

from __future__ import annotations

import numpy as np
import pytest

import expert_models
from prismer_core import DenseMap
from prismer_core.runner import ExpertRunner
from prismer_core.registry import load_registry
from prismer_experts.normal import Normal, normals_from_depth

H, W = 48, 64


def plane(a: float, b: float) -> np.ndarray:
    """A depth map (1 = near) of a plane: depth changes by a per image width to the right and
    b per image width downwards (image width = max(H, W) pixels)."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    return (a * x / W + b * y / W - 0.5)[..., None]


def geometric_normals(depth: np.ndarray, **settings) -> np.ndarray:
    expert = Normal(**settings)
    assert expert.readiness().ready
    (output,) = expert.predict([np.zeros((H, W, 3), np.uint8)], {"depth": [DenseMap(depth)]})
    assert output.data.shape == (H, W, 3) and output.data.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(output.data, axis=-1), 1.0, atol=1e-5)  # unit vectors
    return output.data[4:-4, 4:-4]  # away from the borders, where the gradient is one-sided


def test_a_plane_facing_the_camera_has_normal_z():
    normals = geometric_normals(np.full((H, W, 1), 0.3, np.float32))
    np.testing.assert_allclose(normals, np.broadcast_to([0, 0, 1], normals.shape), atol=1e-6)


@pytest.mark.parametrize("relief", [0.5, 2.0])
def test_a_tilted_plane_has_its_analytic_normal(relief):
    a, b = 0.8, -0.4  # nearer to the right, farther downwards
    normals = geometric_normals(plane(a, b), relief=str(relief), smooth="0")
    # height toward the camera z = relief * W * (depth / 2) pixels, so dz/dx = relief * a / 2
    # and dz/dy = relief * b / 2; n ∝ (-dz/dx, +dz/dy, 1) with y pointing up
    expected = np.array([-relief * a / 2, relief * b / 2, 1.0])
    expected /= np.linalg.norm(expected)
    np.testing.assert_allclose(normals.reshape(-1, 3), np.broadcast_to(expected, (normals.size // 3, 3)), atol=1e-4)
    assert expected[0] < 0 and expected[1] < 0  # faces left (right side is nearer) and down


def test_smoothing_keeps_a_plane_a_plane():
    exact = geometric_normals(plane(0.5, 0.5), smooth="0")
    smoothed = geometric_normals(plane(0.5, 0.5), smooth="2")
    np.testing.assert_allclose(smoothed[4:-4, 4:-4], exact[4:-4, 4:-4], atol=1e-4)


def test_depth_then_normal_through_the_runner(tmp_path):
    model = expert_models.depth_anything(tmp_path / "depth")
    runner = ExpertRunner(["normal", "depth"], registry=load_registry(), settings={"depth": {"model": str(model)}})
    assert runner.order == ["depth", "normal"]  # the dependency runs first, once
    image = expert_models.photo((96, 72))
    outputs = runner([image], ["bus.jpg"])  # validated against the contract
    (depth,), (normals,) = outputs["depth"], outputs["normal"]
    assert normals.data.shape == (72, 96, 3)
    np.testing.assert_array_equal(normals.data, normals_from_depth(depth.data[..., 0], relief=0.5, smooth=1.0))


def test_learned_marigold_normals(tmp_path):
    pipeline = expert_models.marigold_normals(tmp_path / "marigold")
    expert = Normal(model=str(pipeline))
    assert expert.readiness().ready
    images = [expert_models.photo((64, 48)), expert_models.photo((40, 40)), expert_models.photo((64, 48))]
    outputs = expert.predict(images, {})  # the learned path needs no depth
    for image, output in zip(images, outputs):
        assert output.data.shape == (*image.shape[:2], 3) and output.data.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(output.data, axis=-1), 1.0, atol=1e-3)


def test_missing_learned_model_says_what_to_set(tmp_path, monkeypatch):
    monkeypatch.delenv("PRISMER_WEIGHTS_DIR", raising=False)
    readiness = Normal(model=str(tmp_path / "nowhere")).readiness()
    assert not readiness.ready and "Marigold normals pipeline folder" in readiness.reason
    assert "PRISMER_NORMAL_MODEL" in readiness.fix
    (tmp_path / "normal").mkdir()
    (tmp_path / "normal" / "model_index.json").write_text("{}")
    monkeypatch.setenv("PRISMER_WEIGHTS_DIR", str(tmp_path))
    assert Normal().learned(Normal().options)  # a pipeline in $PRISMER_WEIGHTS_DIR/normal is used
