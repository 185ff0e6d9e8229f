"""`saliency`: where a person's eye goes first, by the spectral residual (Hou & Zhang, CVPR 2007).

The log-amplitude spectrum of natural images is smooth; what sticks out of that smooth trend
(the "spectral residual") is what sticks out of the image. The map is computed on each channel
of the CIE Lab image, so an object that differs from its surroundings only by colour is found
too. No weights, a few milliseconds per image; a useful prior for "what is this picture about".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from prismer_core import ConfigurableExpert, DenseMap, ExpertOptions, ExpertSpec, Readiness, hookimpl

__version__ = "1.0.0"


class SaliencyOptions(ExpertOptions):
    """Settings of `saliency` (``--set saliency.KEY=VALUE`` or ``PRISMER_SALIENCY_KEY``)."""

    #: side of the square the spectrum is computed at (the paper's 64)
    size: int = 64
    #: blur of the map at that size, in pixels
    sigma: float = 2.5

    def check(self) -> str | None:
        if self.size < 8 or self.sigma < 0:
            return "size must be at least 8 and sigma at least 0"
        return None


class SpectralResidualSaliency(ConfigurableExpert):
    """Saliency in [-1, 1] (1 = most salient pixel of the image, -1 = least).

    Settings: ``size`` (side of the square the spectrum is computed at, default 64, as in
    the paper) and ``sigma`` (blur of the map at that size, default 2.5 pixels).
    """

    spec = ExpertSpec.dense("saliency", "1.0", channels=1,
                            description="Spectral-residual visual saliency (Hou & Zhang 2007) on Lab channels; no weights")
    Options = SaliencyOptions

    def check(self, options: SaliencyOptions) -> Readiness:
        # the settings were checked before this is called (a bad --set value is reported first)
        return Readiness.requiring("cv2", package="opencv-python")

    def predict(self, images: Sequence[np.ndarray], context: Mapping | None = None) -> list[DenseMap]:
        options = self.options
        return [DenseMap(saliency_map(image, options.size, options.sigma)[..., None]) for image in images]


def saliency_map(image: np.ndarray, size: int = 64, sigma: float = 2.5) -> np.ndarray:
    """An H×W float32 saliency map in [-1, 1] for an H×W×3 uint8 RGB image."""
    import cv2  # imported here, so a missing OpenCV makes the expert 'not ready', not broken

    height, width = image.shape[:2]
    small = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    lab = cv2.cvtColor(small, cv2.COLOR_RGB2LAB).astype(np.float32)
    # Each channel is whitened by the method, so weight it by its contrast: a nearly flat
    # channel (the colour channels of a grey picture) must not add its amplified noise.
    saliency = sum(_spectral_residual(lab[..., c]) * float(lab[..., c].std()) for c in range(3))
    saliency = cv2.GaussianBlur(saliency, (0, 0), sigma)
    saliency = cv2.resize(saliency, (width, height), interpolation=cv2.INTER_LINEAR)
    low, high = float(saliency.min()), float(saliency.max())
    if high - low <= 1e-4 * max(abs(high), 1e-12):  # a flat image: nothing stands out
        return np.full((height, width), -1.0, dtype=np.float32)
    return ((saliency - low) / (high - low) * 2.0 - 1.0).astype(np.float32)


def _spectral_residual(channel: np.ndarray) -> np.ndarray:
    """|IFFT(exp(log-amplitude minus its local mean, with the original phase))|².

    Frequencies absent from the image (exact zeros in drawn or flat images) carry only
    rounding noise in their phase; they are left out instead of being whitened into noise.
    """
    spectrum = np.fft.fft2(channel - channel.mean())  # the mean says nothing about saliency
    amplitude = np.abs(spectrum)
    present = amplitude > 1e-6 * max(float(amplitude.max()), 1e-12)
    log_amplitude = np.log(np.maximum(amplitude, 1e-12)).astype(np.float32)
    # The spectrum is periodic, so its 3×3 local mean wraps around the edges.
    local_mean = sum(np.roll(log_amplitude, (dy, dx), axis=(0, 1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9
    residual = log_amplitude - local_mean
    back = np.fft.ifft2(np.exp(residual) * present * np.exp(1j * np.angle(spectrum)))
    return (np.abs(back) ** 2).astype(np.float32)


@hookimpl
def register_experts(register):
    register(SpectralResidualSaliency)
