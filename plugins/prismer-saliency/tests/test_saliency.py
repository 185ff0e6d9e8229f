"""The saliency expert finds what stands out, keeps to the expert contract, and registers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import prismer_saliency
from prismer_core.runner import ExpertRunner
from prismer_core.registry import Registry


def scene(height: int, width: int, centre: tuple[int, int], colour: tuple[int, int, int], seed: int):
    """A smooth random texture (like a natural background) with one disc of another colour."""
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (height, width, 3)).astype(np.float32), (0, 0), 3)
    image = np.clip(110 + 25 * noise / noise.std(), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:height, :width]
    disc = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= 9**2
    image[disc] = colour
    return image, disc


@pytest.mark.parametrize("colour", [(250, 250, 250), (20, 20, 20), (200, 40, 40)])
def test_the_odd_disc_is_the_salient_part(colour):
    for seed, centre in enumerate([(30, 100), (70, 30), (48, 64)]):
        image, disc = scene(96, 128, centre, colour, seed)
        saliency = prismer_saliency.saliency_map(image)
        assert saliency.shape == (96, 128) and saliency.dtype == np.float32
        assert saliency[disc].mean() > saliency[~disc].mean() + 0.5


def test_a_disc_that_differs_only_in_colour_is_found():
    """Same lightness, other hue: a grey-level method would see nothing here."""
    lab = np.zeros((96, 128, 3), np.float32)
    lab[...] = (60, -40, 30)
    yy, xx = np.mgrid[:96, :128]
    disc = (yy - 50) ** 2 + (xx - 40) ** 2 <= 81
    lab[disc] = (60, 50, 30)
    rgb = (np.clip(cv2.cvtColor(lab, cv2.COLOR_LAB2RGB), 0, 1) * 255).astype(np.uint8)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(float)
    assert abs(grey[disc].mean() - grey[~disc].mean()) < 25  # barely visible in grey
    saliency = prismer_saliency.saliency_map(rgb)
    assert saliency[disc].mean() > saliency[~disc].mean() + 0.5


def test_a_flat_image_has_nothing_salient():
    saliency = prismer_saliency.saliency_map(np.full((40, 50, 3), 90, np.uint8))
    assert np.all(saliency == -1.0)


def test_runs_through_prismer_with_its_outputs_validated():
    """Register through the plugin hook, as prismer does, and let the core check the output."""
    registry = Registry()
    record = registry.add_plugin(prismer_saliency, "saliency", "prismer-saliency", prismer_saliency.__version__)
    assert record.status == "ok" and record.experts == ["saliency"]
    assert registry.entry("saliency").status_text() == "ready"

    images = [scene(72, 96, (30, 40), (250, 250, 250), 0)[0], scene(50, 130, (20, 90), (20, 20, 20), 1)[0]]
    runner = ExpertRunner(["saliency"], registry=registry)
    maps = runner(images, ["a.png", "b.png"])["saliency"]  # raises if the contract is broken
    assert [m.data.shape for m in maps] == [(72, 96, 1), (50, 130, 1)]
    assert all(m.data.min() == -1.0 and m.data.max() == 1.0 for m in maps)


def test_the_installed_package_is_discovered_through_its_entry_point():
    """Needs the package installed (pip install -e .): checks pyproject's entry point."""
    from prismer_core.registry import load_registry

    registry = load_registry()
    assert "saliency" in registry.experts, "not discovered: install the package (pip install -e .)"
    entry = registry.entry("saliency")
    assert entry.plugin.distribution == "prismer-saliency" and entry.plugin.version == prismer_saliency.__version__
    assert entry.status_text() == "ready"


def test_bad_settings_make_the_expert_not_ready_with_a_reason():
    from prismer_saliency import SpectralResidualSaliency

    readiness = SpectralResidualSaliency(size="abc").readiness()
    assert not readiness.ready and "size" in readiness.reason
    assert not SpectralResidualSaliency(size="4").readiness().ready
    assert SpectralResidualSaliency(size="32", sigma="1.5").readiness().ready
