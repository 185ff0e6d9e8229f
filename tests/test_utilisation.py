"""MFU's two halves: FLOPs counted on a real training step, and the peak they are held against."""

from __future__ import annotations

import pytest
import torch

from prismer_core.train.utilisation import counted_flops, measured_cpu_peak, mfu, peak_flops, significant


def test_a_training_step_counts_forward_and_backward_matmuls():
    batch, inputs, outputs = 8, 64, 32
    layer = torch.nn.Linear(inputs, outputs)
    x = torch.randn(batch, inputs)

    def step():
        loss = layer(x).square().mean()
        loss.backward()
        return float(loss)

    loss, flops = counted_flops(step)
    assert isinstance(loss, float)
    # forward 2·B·I·O; backward twice that (the input needs no gradient: one of the two is skipped)
    assert flops == 2 * batch * inputs * outputs * 2


def test_the_cpu_peak_is_measured_and_bounds_the_utilisation():
    peak = measured_cpu_peak(size=256, seconds=0.05)
    assert 1e8 < peak < 1e14  # a real CPU, between a slow core and a very large machine
    achieved = mfu(10.0, 1e9, "cpu")
    assert achieved == pytest.approx(10.0 * 1e9 / peak_flops("cpu"))
    assert mfu(10.0, 1e9, "cpu", devices=2) == pytest.approx(achieved / 2)
    assert mfu(10.0, 0, "cpu") is None  # nothing counted: nothing claimed


def test_a_small_utilisation_is_reported_not_rounded_away():
    # the tiny spec on an H200 (989 TFLOP/s) reaches about 1e-6: fixed decimals made it 0 there
    assert significant(1.2345e-6) == pytest.approx(1.23e-6)
    assert significant(0.35071) == 0.351
    assert significant(None) is None
