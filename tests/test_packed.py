"""oneDNN-packed weights for CPU inference (prismer_core/model/packed.py): the same answers,
the same state dict, and never a stale weight."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from model_helpers import SIX, experts, make_batch, small_spec
from prismer_core.model import build_model, pack_for_inference
from prismer_core.model.packed import PackedLinear
from prismer_core.text import TextCodec

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this PyTorch has no oneDNN")


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    plain = build_model(small_spec(), experts(*SIX)).eval()
    packed = copy.deepcopy(plain)
    marked = pack_for_inference(packed)
    return plain, packed, marked


def test_packing_keeps_every_parameter_and_key(models):
    plain, packed, marked = models
    linears = sum(isinstance(m, nn.Linear) for m in plain.modules())
    assert marked >= linears > 0  # every linear layer, plus embeddings and attention input projections
    assert all(type(m) is not nn.Linear for m in packed.modules())
    assert list(plain.state_dict()) == list(packed.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), packed.state_dict().values()))


def test_packed_inference_gives_the_same_logits_captions_and_scores(models):
    plain, packed, _ = models
    codec = TextCodec.for_decoder(plain.spec.decoder)
    batch = make_batch(plain, batch_size=2, seed=4)
    ids = codec.prompt_batch(["a picture of a red circle"]).ids.expand(2, -1)
    with torch.inference_mode():
        expected, got = plain(batch, ids).logits, packed(batch, ids).logits
    assert torch.allclose(expected, got, atol=1e-4, rtol=1e-4)
    prompts = codec.prompt_batch(["a picture of", "what is written on the sign ? answer :"])
    for beams in (1, 3):
        assert (plain.generate(batch, prompts, end_token_id=codec.end_id, num_beams=beams, max_new_tokens=6)
                == packed.generate(batch, prompts, end_token_id=codec.end_id, num_beams=beams, max_new_tokens=6))


def test_a_changed_weight_is_packed_again_and_training_uses_plain_linear():
    layer = nn.Linear(16, 8)
    pack_for_inference(layer)
    assert isinstance(layer, PackedLinear)
    x = torch.randn(3, 16)
    with torch.no_grad():
        before = layer(x)
        layer.weight.mul_(2.0)  # an in-place update (an optimiser step, load_state_dict)
        after = layer(x)
    assert torch.allclose(after - layer.bias, 2 * (before - layer.bias), atol=1e-5)
    layer.weight = nn.Parameter(torch.zeros(8, 16))  # another tensor altogether
    with torch.no_grad():
        assert torch.allclose(layer(x), layer.bias.expand(3, -1))
    out = layer(x)  # gradients on: F.linear, so backward works as ever
    out.sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.shape == (8, 16)


def test_bf16_weights_pack_too():
    layer = nn.Linear(32, 24).to(torch.bfloat16)
    reference = copy.deepcopy(layer)
    pack_for_inference(layer)
    x = torch.randn(5, 32, dtype=torch.bfloat16)
    with torch.inference_mode():
        assert torch.allclose(layer(x).float(), reference(x).float(), atol=2e-2)
