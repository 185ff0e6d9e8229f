"""Model FLOPs utilisation (MFU): the share of the hardware's peak a training run achieves.

As nanoGPT's ``estimate_mfu``: the FLOPs one training image costs (forward and backward),
times images per second, over the peak FLOP/s of the devices. The FLOPs are counted, not
estimated, by ``torch.utils.flop_counter`` on one real step (matmuls, convolutions and
attention, which are all but a sliver of the work). The peak is measured on the CPU (a
square fp32 matmul with the process's threads: what this machine can do, not a datasheet's
number for another one) and taken from the datasheet on GPUs (dense bf16/fp16 tensor-core
peak; fp32 runs are held against the same number, as is usual for mixed-precision MFU).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")

#: Dense (no sparsity) bf16 tensor-core peaks, FLOP/s, by a part of the device name.
GPU_BF16_PEAKS = {
    "H200": 989.5e12,
    "H100": 989.5e12,  # SXM; the PCIe card is lower (756e12)
    "A100": 312e12,
    "L40S": 362.05e12,
    "A10": 125e12,
    "L4": 121e12,
    "4090": 165.2e12,
    "V100": 125e12,  # fp16
}


def counted_flops(run: Callable[[], T]) -> tuple[T, int]:
    """``run()``'s result and the FLOPs it performed (forward and backward when it trains)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        result = run()
    return result, int(counter.get_total_flops())


@functools.lru_cache(maxsize=None)
def peak_flops(device: str) -> float | None:
    """Peak FLOP/s of one ``device`` ("cpu", "cuda", "cuda:1"); None for a GPU not in the table."""
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
        return next((peak for part, peak in GPU_BF16_PEAKS.items() if part in name), None)
    return measured_cpu_peak()


def measured_cpu_peak(size: int = 1024, seconds: float = 0.3) -> float:
    """fp32 matmul FLOP/s of this process's CPU threads: the best of a few timed repeats."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm-up
    best, deadline = 0.0, time.perf_counter() + seconds
    while True:
        start = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        elapsed = time.perf_counter() - start
        best = max(best, 4 * 2 * size**3 / elapsed)
        if time.perf_counter() > deadline:
            return best


def mfu(images_per_second: float, flops_per_image: float, device: str, devices: int = 1) -> float | None:
    """The achieved share of the peak of ``devices`` devices like ``device``; None without a peak."""
    peak = peak_flops(device)
    if not peak or not flops_per_image:
        return None
    return images_per_second * flops_per_image / (peak * devices)


def significant(value: float | None, digits: int = 3) -> float | None:
    """``value`` to ``digits`` significant digits for a report: a small model on a large GPU has an
    MFU of 1e-6, which rounding to fixed decimals would report as 0."""
    return float(f"{value:.{digits}g}") if value is not None else None
