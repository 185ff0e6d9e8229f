"""Real weight loading, offline: local files given where an open_clip tag or a transformers id goes."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file
from transformers import RobertaForCausalLM

from prismer_core.text import TokenRows
from model_helpers import experts, make_batch, save_tiny_backbones, spec_with_local_backbones
from prismer_core.checkpoint import WEIGHTS_FILE, save_checkpoint, saved_weight_names
from prismer_core.errors import PrismerError
from prismer_core.model import Prismer, build_model


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    return save_tiny_backbones(tmp_path_factory.mktemp("backbones"))


@pytest.fixture(scope="module")
def model(backbones):
    torch.manual_seed(0)
    return build_model(spec_with_local_backbones(*backbones), experts("edge", "objdet")).eval()


def test_backbone_weights_arrive_from_local_sources(backbones, model):
    clip_file, roberta_dir = backbones
    clip = load_file(str(clip_file))
    ours = dict(model.named_parameters())
    assert torch.equal(ours["encoder.blocks.2.mlp.c_fc.weight"], clip["visual.transformer.resblocks.2.mlp.c_fc.weight"])
    assert torch.equal(ours["encoder.patch_embed.weight"], clip["visual.conv1.weight"])
    assert torch.equal(ours["encoder.positional_embedding"], clip["visual.positional_embedding"])

    roberta = RobertaForCausalLM.from_pretrained(roberta_dir).state_dict()
    pairs = {
        "decoder.embed.tokens.weight": "roberta.embeddings.word_embeddings.weight",
        "decoder.layers.3.self_attn.value.weight": "roberta.encoder.layer.3.attention.self.value.weight",
        "decoder.layers.1.cross_attn.key.weight": "roberta.encoder.layer.1.crossattention.self.key.weight",
        "decoder.layers.0.ffn.norm.bias": "roberta.encoder.layer.0.output.LayerNorm.bias",
        "decoder.lm_head.dense.weight": "lm_head.dense.weight",
    }
    for our_name, their_name in pairs.items():
        assert torch.equal(ours[our_name], roberta[their_name]), our_name
    loaded = {name for name in ours if name in model.pretrained_names}
    assert all(name.startswith(("encoder.blocks", "encoder.patch", "encoder.class", "encoder.positional", "encoder.ln_",
                                "decoder.embed", "decoder.lm_head", "decoder.layers")) for name in loaded)
    assert not any(".adaptor" in name or "stems" in name or "resampler" in name for name in loaded)


def test_a_conv_stem_on_a_pretrained_tower_is_trained_and_saved_not_taken_from_the_source(backbones):
    model = build_model(spec_with_local_backbones(*backbones, **{"vision.rgb_stem": "conv"}))
    saved = set(saved_weight_names(model))
    assert "encoder.blocks.2.mlp.c_fc.weight" in model.pretrained_names  # the tower's blocks still come from the file
    stem = [name for name, _ in model.named_parameters() if name.startswith(("encoder.rgb_stem.", "encoder.patch_embed."))]
    assert stem and all(name in saved and name not in model.pretrained_names for name in stem)


def test_decoder_matches_transformers_roberta_at_initialisation(backbones, model):
    """Same weights, same vision tokens: our cached SDPA decoder (with its adaptors at their
    zero start) gives the logits of transformers' own RobertaForCausalLM."""
    _, roberta_dir = backbones
    reference = RobertaForCausalLM.from_pretrained(roberta_dir).eval()
    batch = make_batch(model)
    input_ids = torch.tensor([[0, 31, 415, 88, 9, 2], [0, 1205, 23, 7, 1, 1]])
    mask = (input_ids != 1).long()
    with torch.no_grad():
        vision = model.encode_images(batch)
        theirs = reference(input_ids=input_ids, attention_mask=mask, encoder_hidden_states=vision).logits
        ours = model(batch, input_ids, mask).logits
    real = mask.bool()
    assert torch.allclose(ours[real], theirs[real], atol=1e-4)


def test_shapes_that_disagree_with_the_weights_are_named(backbones):
    with pytest.raises(PrismerError, match=r"num_hidden_layers=4 but the spec says decoder\.layers=6"):
        build_model(spec_with_local_backbones(*backbones, **{"decoder.layers": 6}))
    with pytest.raises(PrismerError, match="cannot load the vision tower 'prismer-tiny-vit' with weights '/nowhere.pt': .* local file"):
        build_model(spec_with_local_backbones(*backbones, **{"vision.pretrained": "/nowhere.pt"}))


def test_checkpoint_references_sourced_backbones_instead_of_copying_them(backbones, model, tmp_path):
    model = copy.deepcopy(model)  # the module's shared model stays at its pre-trained start
    with torch.no_grad():
        model.decoder.layers[1].adaptor.up.weight.normal_()  # "trained"
    directory = save_checkpoint(model, tmp_path / "ckpt", {"step": 7})
    saved = load_file(str(directory / WEIGHTS_FILE))
    assert not any(name.startswith(("encoder.blocks.", "decoder.layers.0.self_attn", "decoder.layers.0.ffn")) for name in saved)
    assert "decoder.layers.1.adaptor.up.weight" in saved and "encoder.stems.objdet.instance_embedding.weight" in saved
    restored = Prismer.from_pretrained(directory).eval()
    batch = make_batch(model)
    ids = torch.randint(5, 1000, (2, 6))
    with torch.no_grad():
        assert torch.allclose(restored(batch, ids).logits, model(batch, ids).logits, atol=1e-5)


def test_cached_greedy_decoding_follows_transformers_roberta(backbones, model):
    """Step by step, transformers' own forward pass picks the tokens our cached decoder picks."""
    _, roberta_dir = backbones
    reference = RobertaForCausalLM.from_pretrained(roberta_dir).eval()
    batch = make_batch(model, seed=4)
    prompt = torch.tensor([[0, 31, 415, 88], [0, 77, 5, 9]])
    ours = model.generate(batch, TokenRows(prompt, torch.ones_like(prompt, dtype=torch.bool)), end_token_id=2,
                          num_beams=1, max_new_tokens=6)
    ids = prompt
    with torch.no_grad():
        vision = model.encode_images(batch)
        for _ in range(6):
            logits = reference(input_ids=ids, encoder_hidden_states=vision).logits[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    assert ours == ids[:, 4:].tolist()
