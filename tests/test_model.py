"""The Prismer model as the training and inference code use it: shapes, freezing, generation, scoring."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from model_helpers import SIX, experts, make_batch, small_spec
from prismer_core.errors import PrismerError
from prismer_core.inputs import ModelInputs
from prismer_core.model import build_model
from prismer_core.model.stems import ExpertStem, LabelMap, label_cell_means
from prismer_core.model.vision import VisionEncoder, load_vision_tower
from prismer_core.specs import ModelSpecError, load_spec
from prismer_core.text import TextCodec

EXPERT_SETS = {
    0: (),
    1: ("edge",),
    3: ("depth", "normal", "seg"),
    6: tuple(SIX),
}


@pytest.fixture(scope="module")
def codec():
    return TextCodec.for_decoder(small_spec().decoder)


@pytest.fixture(scope="module")
def six_expert_model():
    torch.manual_seed(0)
    return build_model(small_spec(), experts(*SIX)).eval()


@pytest.mark.parametrize("count", sorted(EXPERT_SETS))
def test_shapes_for_0_1_3_and_6_experts_and_constant_token_count(count):
    torch.manual_seed(0)
    model = build_model(small_spec(), experts(*EXPERT_SETS[count]))
    batch = make_batch(model, batch_size=2)
    tokens = model.encode_images(batch)
    patches = (64 // 16) ** 2
    expected = 1 + patches + (64 if count else 0)  # class + RGB patches + resampler latents
    assert tokens.shape == (2, expected, 192) == (2, model.num_vision_tokens, 192)
    assert (model.encoder.resampler is None) == (count == 0)
    input_ids = torch.randint(5, 1000, (2, 9))
    model.eval()  # no dropout: the two calls below must see the same network
    logits = model(batch, input_ids, torch.ones_like(input_ids)).logits
    assert logits.shape == (2, 9, model.spec.decoder.vocab_size)
    labels = input_ids.clone()
    labels[:, :5] = -100  # a prompt: only the last 4 tokens are predicted
    out = model(batch, input_ids, torch.ones_like(input_ids), labels=labels)
    assert out.logits.shape == (2 * 4, model.spec.decoder.vocab_size)  # positions 4..7 predict tokens 5..8
    expected = F.cross_entropy(logits[:, 4:8].flatten(0, 1), input_ids[:, 5:9].flatten())
    assert torch.allclose(out.loss, expected, atol=1e-5)
    assert 8.0 < out.loss.item() < 12.0  # about ln(30522) at init


def test_stems_on_another_grid_than_the_patches_get_resized_positions():
    """ViT-L/14 at 336 px has a 24×24 patch grid but 21×21 stem grids; 72 px with patch 16 is the
    tiny analogue. Both RGB stems drop the 8 pixels past the last whole patch, as a patchify layer does."""
    for rgb_stem in ("patch", "conv"):
        model = build_model(small_spec(image_size=72, **{"vision.rgb_stem": rgb_stem}), experts("depth", "objdet"))
        assert (model.encoder.grid, model.encoder.stem_grid) == (4, 5)
        batch = make_batch(model)
        tokens = model.encode_images(batch)
        assert tokens.shape == (2, 1 + 16 + 64, 192) and torch.isfinite(tokens).all()
        batch.rgb[..., 64:] = batch.rgb[..., 64:, :] = 0.0  # what lies past the last patch is not read
        assert torch.equal(model.encode_images(batch), tokens)


def test_prismerz_encoder_is_the_pretrained_vit_at_initialisation():
    spec = small_spec(**{"vision.rgb_stem": "patch"})  # the paper's patchify layer
    tower = load_vision_tower(spec)
    tower.output_tokens = True
    rgb = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pooled, reference_tokens = tower(rgb)
        ours = VisionEncoder(spec, {}, tower).eval()(rgb, {}, {})
    assert torch.allclose(ours[:, 1:], reference_tokens, atol=1e-5)
    assert torch.allclose(ours[:, 0] @ tower.proj, pooled, atol=1e-5)



@pytest.mark.parametrize("rgb_attends_latents", [True, False])
def test_rgb_tokens_see_the_latents_only_when_the_spec_says_so(rgb_attends_latents):
    """Same seed, with and without experts: every shared weight starts the same (the expert
    parts draw from their own random stream); with the one-way mask the RGB tokens then come out
    exactly as PrismerZ's, and with the paper's full attention the latents change them."""
    spec = small_spec(**{"resampler.rgb_attends_latents": rgb_attends_latents})
    torch.manual_seed(0)
    prismerz = build_model(spec, {}).eval()
    torch.manual_seed(0)
    with_experts = build_model(spec, experts("edge", "ocr")).eval()
    shared = prismerz.state_dict()
    assert all(torch.equal(value, with_experts.state_dict()[name]) for name, value in shared.items())
    batch = make_batch(with_experts)
    with torch.no_grad():
        rgb_only = prismerz.encode_images(ModelInputs(batch.rgb))
        tokens = with_experts.encode_images(batch)
    same = torch.allclose(tokens[:, : rgb_only.shape[1]], rgb_only, atol=1e-5)
    assert same is not rgb_attends_latents
    assert tokens.shape[1] == rgb_only.shape[1] + 64

@pytest.mark.parametrize("init, low, high", [("bert", 0.02, 0.2), ("fan_in", 0.5, 2.0)])
def test_decoder_attention_init_sets_the_spread_of_its_first_attention_logits(init, low, high):
    """``fan_in`` starts attention away from uniform (logit std near 1); BERT's 0.02 leaves it
    uniform (std ~0.08), where the query and key gradients, each scaled by the other, are tiny."""
    torch.manual_seed(0)
    model = build_model(small_spec(**{"decoder.attention_init": init}), {})
    attention = model.decoder.layers[0].cross_attn
    x = F.layer_norm(torch.randn(64, 8, 192), (192,))
    vision = F.layer_norm(torch.randn(64, 17, model.encoder.width), (model.encoder.width,))
    q, (k, _) = attention._split(attention.query(x)), attention.project_kv(vision)
    logits = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    assert low < float(logits.std()) < high
    assert float(model.decoder.layers[0].ffn.fc_in.weight.std()) == pytest.approx(0.02, rel=0.05)  # the rest stays BERT's


def test_adaptors_start_as_identity_and_are_in_the_path(six_expert_model):
    model = six_expert_model
    batch = make_batch(model)
    ids = torch.randint(5, 1000, (2, 7))
    with torch.no_grad():
        before = model(batch, ids).logits
        for adaptor in [*model.encoder.adaptors, *(layer.adaptor for layer in model.decoder.layers)]:
            assert torch.equal(adaptor(before[..., :192]), before[..., :192])  # exactly the identity
        original = model.decoder.layers[0].adaptor.up.weight.clone()
        model.decoder.layers[0].adaptor.up.weight.normal_(std=0.5)
        after = model(batch, ids).logits
        model.decoder.layers[0].adaptor.up.weight.copy_(original)
    assert not torch.allclose(before, after, atol=1e-3)


def test_frozen_parameters_get_no_gradient_and_trainable_ones_do():
    torch.manual_seed(0)
    spec = small_spec(frozen=["vision.backbone", "decoder.backbone"])
    model = build_model(spec, experts("depth", "objdet"))
    report = model.parameter_report()
    assert report["vision.backbone"].trainable == report["decoder.backbone"].trainable == 0
    assert all(count.trainable == count.total for part, count in report.items() if "backbone" not in part)
    batch = make_batch(model)
    ids = torch.randint(5, 1000, (2, 8))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.SGD(trainable, lr=0.1)
    for _ in range(2):  # the adaptors' up-projections start at zero: their down-projections learn from step two
        optimiser.zero_grad()
        output = model(batch, ids, labels=ids)
        (output.loss + output.reconstruction_loss).backward()  # the tiny spec's pixel reconstruction trains its head
        optimiser.step()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name


def test_semantic_stem_keeps_a_small_labelled_region_whole():
    """A label covering 1/16 of a token's cell (a printed word, say) moves that token as far as
    a label covering the whole cell, wherever the label raises a channel: max-pooling does not
    blend it into the background. Other tokens do not move."""
    torch.manual_seed(0)
    stem = ExpertStem(64, 32, semantic=True).eval()
    table = torch.stack([torch.zeros(64), torch.randn(64)])[None]  # background, the label
    background = torch.zeros(1, 64, 64, dtype=torch.int32)
    small, full = background.clone(), background.clone()
    small[0, 20:24, 4:8] = 1  # 4×4 pixels inside token (1, 0)'s 16×16 cell
    full[0, 16:32, 0:16] = 1
    with torch.no_grad():
        plain, with_small, with_full = (stem(LabelMap(m, table))[0].reshape(4, 4, 32) for m in (background, small, full))
    raised = with_full[1, 0] > plain[1, 0]
    assert raised.any() and torch.allclose(with_small[1, 0][raised], with_full[1, 0][raised])
    moved = (with_small - plain).abs().sum(-1) > 0
    assert moved[1, 0] and moved.sum() == 1


def test_instance_embedding_marks_each_instance_without_a_loop():
    torch.manual_seed(0)
    stem = ExpertStem(64, 32, semantic=True, instance_slots=128).eval()
    maps = LabelMap(torch.randint(0, 6, (1, 64, 64)), torch.randn(1, 6, 64))
    none = torch.zeros(1, 64, 64, dtype=torch.long)
    ids = none.clone()
    ids[0, :32, :32] = 3  # top-left quarter of the image: tokens (0..1, 0..1) of the 4×4 grid
    with torch.no_grad():
        plain, marked = stem(maps, none), stem(maps, ids)
    delta = (marked - plain)[0].reshape(4, 4, 32)
    slot = stem.instance_embedding.weight[2]  # id k uses slot k - 1 in eval mode
    assert torch.allclose(delta[:2, :2], slot.expand(2, 2, 32), atol=1e-6)
    assert delta[2:].abs().max() == 0 and delta[:, 2:].abs().max() == 0


def test_generation_with_the_cache_equals_generation_without(six_expert_model, codec):
    model = six_expert_model
    batch = make_batch(model, batch_size=2, seed=3)
    prompts = codec.prompt_batch(["a picture of", "what is written on the sign ? answer :"])  # left padding
    for beams in (1, 3):
        cached = model.generate(batch, prompts, end_token_id=codec.end_id, num_beams=beams, max_new_tokens=8)
        uncached = model.generate(batch, prompts, end_token_id=codec.end_id, num_beams=beams, max_new_tokens=8,
                                  use_cache=False)
        assert cached == uncached
        assert all(len(ids) == 8 for ids in cached)  # a random model does not stop early
    shared = model.generate(batch, codec.prompt_batch(["a picture of"]), end_token_id=codec.end_id, max_new_tokens=5)
    texts = codec.decode(shared)
    assert len(texts) == 2 and all(isinstance(t, str) and t for t in texts)


def test_min_length_holds_back_the_end_token(six_expert_model, codec):
    model, end = six_expert_model, codec.end_id
    with torch.no_grad():
        model.decoder.lm_head.bias[end] = 1e4  # the end token always wins...
        try:
            batch = make_batch(model)
            empty = codec.prompt_batch([""])
            assert model.generate(batch, empty, end_token_id=end, num_beams=3, max_new_tokens=6) == [[], []]
            forced = model.generate(batch, empty, end_token_id=end, num_beams=3, max_new_tokens=6, min_length=4)
        finally:
            model.decoder.lm_head.bias[end] = 0.0
    assert [len(ids) for ids in forced] == [4, 4]  # ...once four tokens are written


def test_score_is_the_log_likelihood_of_each_candidate(six_expert_model, codec):
    model = six_expert_model
    batch = make_batch(model, seed=5)
    candidates = ["red", "a small dog", "two"]
    question = "question : what is it ? answer :"
    scores = model.score(batch, codec.prompt_batch([question]), codec.candidate_batch([question], candidates))
    assert scores.shape == (2, 3)
    tokenizer = codec.tokenizer
    prompt = tokenizer(question)["input_ids"][:-1]
    for c, candidate in enumerate(candidates):
        answer = tokenizer(" " + candidate, add_special_tokens=False)["input_ids"] + [tokenizer.sep_token_id]
        ids = torch.tensor([prompt + answer] * 2)
        with torch.no_grad():
            log_probs = F.log_softmax(model(batch, ids).logits, dim=-1)
        direct = sum(log_probs[:, len(prompt) - 1 + i, token] for i, token in enumerate(answer))
        assert torch.allclose(scores[:, c], direct, atol=1e-3)


def test_an_output_vocabulary_writes_only_its_tokens_with_the_full_softmax_restricted_to_them(codec):
    words = codec.tokens("red blue circle star two") + [codec.end_id]
    torch.manual_seed(0)
    full = build_model(small_spec(), experts()).eval()
    torch.manual_seed(0)
    model = build_model(small_spec(**{"decoder.output_vocabulary": sorted(words)}), experts()).eval()
    batch = make_batch(model)
    ids = torch.tensor([[codec.begin_id, *words[:3]], [codec.begin_id, *words[2:5]]])
    with torch.no_grad():
        logits = model(batch, ids).logits
        reference = full(batch, ids).logits
    written = torch.isfinite(logits)
    assert written.sum(-1).eq(len(words)).all() and written[..., sorted(words)].all()
    assert torch.allclose(logits[written], reference[written], atol=1e-5)  # the same weights, the same numbers

    labels = ids.clone()
    labels[:, 0] = -100
    out = model(batch, ids, labels=labels)
    assert out.logits.shape == (2 * 3, len(words))  # training's logits span the output vocabulary only
    restricted = reference[:, :3, sorted(words)].flatten(0, 1)
    places = torch.tensor([sorted(words).index(t) for t in ids[:, 1:].flatten().tolist()])
    assert torch.allclose(out.loss, F.cross_entropy(restricted, places), atol=1e-5)

    written_ids = model.generate(batch, codec.prompt_batch(["a picture of"]), end_token_id=codec.end_id, max_new_tokens=6)
    assert {t for row in written_ids for t in row} <= set(words)
    outside = ids.clone()
    outside[0, 2] = codec.tokens("dog")[0]
    with pytest.raises(PrismerError, match=r"target token ids \[\d+\] are not in this decoder's output vocabulary"):
        model(batch, outside, labels=outside)
    with pytest.raises(ModelSpecError, match="output_vocabulary must be"):
        small_spec(**{"decoder.output_vocabulary": [5, 3]})


def test_bad_inputs_are_clear_errors(six_expert_model):
    model = six_expert_model
    batch = make_batch(model)
    missing = replace(batch, experts={k: v for k, v in batch.experts.items() if k != "seg"})
    with pytest.raises(PrismerError, match=r"inputs.experts\['seg'\] must be label ids \[2, 64, 64\] \(a semantic expert\), got nothing"):
        model.encode_images(missing)
    with pytest.raises(PrismerError, match=r"inputs.experts\['seg'\] must be label ids .* got torch.float32 \[2, 64, 64, 64\]"):
        model.encode_images(replace(batch, experts={**batch.experts, "seg": torch.zeros(2, 64, 64, 64)}))  # the old expanded form
    with pytest.raises(PrismerError, match=r"inputs.label_tables\['ocr'\] must be \[2, K, 64\], got nothing"):
        model.encode_images(replace(batch, label_tables={"seg": batch.label_tables["seg"], "objdet": batch.label_tables["objdet"]}))
    beyond = batch.experts["objdet"].clone()
    beyond[1, 0, 0] = 5  # the tables have 5 rows
    with pytest.raises(PrismerError, match=r"inputs.experts\['objdet'\] has label ids 0..5, but its label table has 5 rows"):
        model.encode_images(replace(batch, experts={**batch.experts, "objdet": beyond}))
    with pytest.raises(PrismerError, match="not built for: sal"):
        model.encode_images(replace(batch, experts={**batch.experts, "sal": batch.experts["seg"]}))
    with pytest.raises(PrismerError, match=r"inputs.instances\['ocr'\]"):
        model.encode_images(replace(batch, instances={"objdet": batch.instances["objdet"]}))
    with pytest.raises(PrismerError, match=r"inputs.rgb must be a float tensor \[B, 3, 64, 64\]"):
        model.encode_images(replace(batch, rgb=torch.zeros(2, 3, 32, 32)))
    with pytest.raises(PrismerError, match="reads ModelInputs"):
        model.encode_images({"rgb": batch.rgb})
    with pytest.raises(PrismerError, match=r"inputs.present\['seg'\] must be a bool tensor \[2\], got \(3,\)"):
        model.encode_images(replace(batch, present={"seg": torch.tensor([True, False, True])}))
    with pytest.raises(PrismerError, match="inputs.present names 'sal', an expert the model was not built for"):
        model.encode_images(replace(batch, present={"sal": torch.tensor([True, False])}))


@pytest.fixture(scope="module")
def opened_model():
    """The six-expert model with its resampler's zero-initialised branches opened, so expert
    maps reach the vision tokens (at initialisation they do not, by design)."""
    torch.manual_seed(1)
    model = build_model(small_spec(), experts(*SIX)).eval()
    with torch.no_grad():
        for parameter in model.encoder.resampler.parameters():
            if not parameter.any():
                parameter.normal_(0, 0.05)
    return model


def _scrambled(batch: ModelInputs, name: str, row: int) -> ModelInputs:
    """``batch`` with ``name``'s map (and instances) of sample ``row`` replaced by noise."""
    maps, tables = {**batch.experts, name: batch.experts[name].clone()}, dict(batch.label_tables)
    if name in tables:  # other label ids, and other embeddings behind them
        maps[name][row] = torch.randint_like(maps[name][row], 0, tables[name].shape[1])
        tables[name] = tables[name].clone()
        tables[name][row] = torch.randn_like(tables[name][row]).clamp(-1, 1)
    else:
        maps[name][row] = torch.randn_like(maps[name][row]).clamp(-1, 1)
    instances = dict(batch.instances)
    if name in instances:
        instances[name] = instances[name].clone()
        instances[name][row] = torch.randint_like(instances[name][row], 0, 5)
    return replace(batch, experts=maps, instances=instances, label_tables=tables)


def test_an_absent_experts_map_does_not_reach_the_model_and_the_other_samples_are_untouched(opened_model, codec):
    """A mask, not zeros: whatever the absent map holds, the sample's tokens and logits stay the
    same; a sample that has the expert gives what it gives with every expert."""
    model = opened_model
    torch.manual_seed(3)
    batch = make_batch(model, seed=3)
    absent = replace(batch, present={"seg": torch.tensor([True, False]), "ocr": torch.tensor([True, False])})
    ids = codec.prompt_batch(["a picture of a red circle"]).ids.expand(2, -1)
    with torch.no_grad():
        tokens = model.encode_images(absent)
        noisy = model.encode_images(_scrambled(_scrambled(absent, "seg", 1), "ocr", 1))
        logits = model(absent, ids).logits
        noisy_logits = model(_scrambled(absent, "seg", 1), ids).logits
        full = model.encode_images(batch)
        changed = model.encode_images(_scrambled(batch, "seg", 1))
    assert torch.allclose(tokens[1], noisy[1], atol=1e-5)
    assert torch.allclose(logits[1], noisy_logits[1], atol=1e-4)
    assert not torch.allclose(full[1], changed[1], atol=1e-3)  # present, the map matters
    assert torch.allclose(tokens[0], full[0], atol=1e-5)  # sample 0 has every expert
    assert not torch.allclose(tokens[1], full[1], atol=1e-3)  # and sample 1 differs: seg and ocr are gone


def test_a_sample_without_any_expert_reads_rgb_alone(opened_model, codec):
    model = opened_model
    batch = make_batch(model, seed=4)
    none = replace(batch, present={name: torch.tensor([False, True]) for name in model.expert_specs})
    ids = codec.prompt_batch(["question : what is it ? answer :"]).ids.expand(2, -1)
    scrambled = none
    for name in model.expert_specs:
        scrambled = _scrambled(scrambled, name, 0)
    with torch.no_grad():
        logits, again = model(none, ids).logits, model(scrambled, ids).logits
        prompt = codec.prompt_batch(["a picture of"])
        captions = model.generate(none, prompt, end_token_id=codec.end_id, max_new_tokens=4, num_beams=2)
        again_captions = model.generate(scrambled, prompt, end_token_id=codec.end_id, max_new_tokens=4, num_beams=2)
        uncached = model.generate(none, prompt, end_token_id=codec.end_id, max_new_tokens=4, num_beams=2, use_cache=False)
    assert torch.isfinite(logits).all()
    assert torch.allclose(logits[0], again[0], atol=1e-4)
    assert captions[0] == again_captions[0] and captions == uncached


def test_an_expert_absent_from_every_sample_gets_no_gradient(opened_model, codec):
    model = opened_model.train()
    try:
        batch = make_batch(model, seed=6)
        absent = replace(batch, present={"depth": torch.tensor([False, False])})
        ids = codec.prompt_batch(["a picture of a red circle"]).ids.expand(2, -1)
        model.zero_grad()
        model(absent, ids, labels=ids).loss.backward()
        depth = [p.grad for p in model.encoder.stems["depth"].parameters()]
        edge = [p.grad for p in model.encoder.stems["edge"].parameters()]
        assert all(g is None or not g.any() for g in depth)
        assert any(g is not None and g.abs().sum() > 0 for g in edge)
    finally:
        model.zero_grad()
        model.eval()


def test_model_inputs_move_select_and_concatenate(six_expert_model):
    batch = make_batch(six_expert_model, batch_size=3)
    one = batch.select(1)
    assert len(one) == 1 and torch.equal(one.experts["seg"][0], batch.experts["seg"][1])
    again = ModelInputs.concat([batch.select(0), batch.select([1, 2])])
    assert all(torch.equal(a, b) for a, b in zip(
        [again.rgb, *again.experts.values(), *again.instances.values()],
        [batch.rgb, *batch.experts.values(), *batch.instances.values()]))
    half = batch.to("cpu", torch.bfloat16)
    assert half.rgb.dtype == half.experts["edge"].dtype == half.label_tables["seg"].dtype == torch.bfloat16
    assert half.instances["ocr"].dtype == torch.long and half.experts["seg"].dtype == torch.int32  # ids keep their type


def test_samples_with_tables_of_different_lengths_batch_and_look_up_their_own_rows(six_expert_model):
    """A sample's label ids index its own table; concatenation pads the shorter tables with zero
    rows, and the semantic stem averages each sample's cells from its own table exactly as
    average-pooling the map ``table[ids]`` would (which is never made)."""
    model = six_expert_model
    short, long = make_batch(model, batch_size=1, seed=1), make_batch(model, batch_size=1, seed=2)
    long = replace(long, label_tables={**long.label_tables, "seg": torch.rand(1, 9, 64)})
    both = ModelInputs.concat([short, long])
    assert both.label_tables["seg"].shape == (2, 9, 64)
    assert not both.label_tables["seg"][0, 5:].any()  # padding
    _, maps, _, _ = model._check_inputs(both)
    means = label_cell_means(maps["seg"], 4)
    for row, part in enumerate([short, long]):
        table, ids = part.label_tables["seg"][0], part.experts["seg"][0].long()
        expected = F.avg_pool2d(table[ids].permute(2, 0, 1)[None], 4, ceil_mode=True)[0]
        assert torch.allclose(means[row], expected, atol=1e-6)


def test_label_cell_means_average_a_cell_the_border_cuts_over_the_pixels_it_has():
    ids = torch.randint(0, 7, (2, 30, 30))  # 30 = 7 whole cells of 4 and one of 2
    table = torch.randn(2, 7, 5)
    expected = F.avg_pool2d(torch.stack([table[b][ids[b]] for b in range(2)]).permute(0, 3, 1, 2), 4, ceil_mode=True)
    assert torch.allclose(label_cell_means(LabelMap(ids, table), 4), expected, atol=1e-6)


def test_specs_are_validated_with_file_and_field(tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text(load_spec("tiny").model_dump_json().replace('"hidden":192', '"hidden":"wide"'))  # JSON is YAML
    with pytest.raises(ModelSpecError, match=r"mine\.yaml: decoder\.hidden: Input should be a valid integer"):
        load_spec(bad)
    with pytest.raises(ModelSpecError, match=r"unknown model spec 'bsae'; did you mean 'base'"):
        load_spec("bsae")
    with pytest.raises(ModelSpecError, match=r"frozen\.0: Input should be 'vision\.backbone'"):
        load_spec("tiny", {"frozen": ["vision.everything"]})
    with pytest.raises(ModelSpecError, match="decoder.hidden_size: no such field"):
        load_spec("tiny", {"decoder.hidden_size": 10})
