"""MaMMUT's contrastive pass: the spec option, the bidirectional text pass, the loss and its
treatment of repeated images, the training data's pairs, and the weight flag."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from model_helpers import make_batch, small_spec
from prismer_core.data.dataset import Collator, TrainingData
from prismer_core.data.encoding import SampleEncoder
from prismer_core.data.manifest import load_data
from prismer_core.data.transforms import PairedTransform
from prismer_core.demo import generate_demo
from prismer_core.errors import PrismerError
from prismer_core.specs import load_spec
from prismer_core.model import build_model
from prismer_core.model.contrastive import contrastive_loss
from prismer_core.text import TextCodec
from prismer_core.train.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")
ON = {"contrastive.enabled": True}


def test_the_pass_is_off_by_default_and_adds_only_its_heads_when_on():
    for name in ("tiny", "base", "large"):
        assert build_model(name, device="meta").spec.contrastive.enabled is False
    torch.manual_seed(0)
    plain = build_model(small_spec())
    torch.manual_seed(0)
    both = build_model(small_spec(**ON))
    extra = set(both.state_dict()) - set(plain.state_dict())
    assert extra and all(key.startswith("contrastive.") for key in extra)
    assert not set(plain.state_dict()) - set(both.state_dict())
    # built last: every other weight starts as without the pass, so the generative pass is the same
    assert all(torch.equal(tensor, both.state_dict()[key]) for key, tensor in plain.state_dict().items())
    assert both.parameter_report()["contrastive"].trainable > 0 and "contrastive" not in plain.parameter_report()
    batch, ids = make_batch(plain), torch.randint(5, 1000, (2, 7))
    assert torch.equal(plain.eval()(batch, ids).logits, both.eval()(batch, ids).logits)


def test_a_model_without_the_pass_says_so_when_asked_to_embed():
    model = build_model(small_spec())
    with pytest.raises(PrismerError, match=r"no contrastive pass .*--spec-set contrastive.enabled=true"):
        model.embed_images(make_batch(model))


def test_the_text_pass_is_bidirectional_ignores_padding_and_gives_unit_vectors():
    torch.manual_seed(0)
    model = build_model(small_spec(**ON)).eval()
    codec = TextCodec.for_decoder(model.spec.decoder)
    hidden = model.decoder.encode_text
    rows = codec.text_batch(["a red circle on the left", "a red circle on the right"])
    states = hidden(rows.ids, rows.valid)
    # the first token already sees the last word: the two texts differ only there
    assert not torch.allclose(states[0, 1], states[1, 1])
    alone = codec.text_batch(["a red circle on the left"])
    padded = codec.text_batch(["a red circle on the left", "one much longer text that pads the first one a lot"])
    assert torch.allclose(model.embed_texts(alone)[0], model.embed_texts(padded)[0], atol=1e-5)
    vectors = model.embed_texts(rows)
    assert vectors.shape == (2, model.spec.contrastive.dim)
    assert torch.allclose(vectors.norm(dim=1), torch.ones(2), atol=1e-5)
    images = model.embed_images(make_batch(model, 3))
    assert images.shape == (3, 256) and torch.allclose(images.norm(dim=1), torch.ones(3), atol=1e-5)


def test_a_long_text_is_cut_but_keeps_its_end_token():
    codec = TextCodec.for_decoder(small_spec().decoder)
    rows = codec.text_batch(["word " * 100], max_length=16)
    assert rows.ids.shape == (1, 16) and rows.ids[0, 0] == codec.begin_id and rows.ids[0, -1] == codec.end_id


def infonce(logits: torch.Tensor) -> torch.Tensor:
    targets = torch.arange(len(logits))
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def test_the_loss_is_symmetric_infonce_over_distinct_pairs():
    torch.manual_seed(1)
    images, texts = F.normalize(torch.randn(4, 8), dim=1), F.normalize(torch.randn(4, 8), dim=1)
    rows = torch.arange(4)
    loss = contrastive_loss(images, texts, rows, torch.arange(4) + 10, torch.arange(4) + 20, torch.tensor(5.0))
    assert torch.allclose(loss, infonce(5.0 * texts @ images.T))


def test_rows_of_one_image_are_not_negatives_of_each_other():
    """Rows 0 and 1 show one scene (a caption row and a question row with that caption); row 2
    is another scene without a caption, row 3 a third one with its own caption."""
    torch.manual_seed(2)
    images, texts = F.normalize(torch.randn(4, 8), dim=1), F.normalize(torch.randn(3, 8), dim=1)
    rows, image_keys, text_keys = torch.tensor([0, 1, 3]), torch.tensor([7, 7, 8, 9]), torch.tensor([70, 70, 90])
    scale = torch.tensor(3.0)
    loss = contrastive_loss(images, texts, rows, image_keys, text_keys, scale)
    logits = scale * texts @ images.T
    # text -> image: text 0 (of row 0) competes with images 2 and 3, not with image 1 (its scene)
    t2i = [-F.log_softmax(logits[0, [0, 2, 3]], 0)[0], -F.log_softmax(logits[1, [1, 2, 3]], 0)[0],
           -F.log_softmax(logits[2, [0, 1, 2, 3]], 0)[3]]
    # image -> text: image 0 competes with text 2 only (text 1 is its own caption again)
    i2t = [-F.log_softmax(logits[[0, 2], 0], 0)[0], -F.log_softmax(logits[[1, 2], 1], 0)[0],
           -F.log_softmax(logits[[0, 1, 2], 3], 0)[2]]
    assert torch.allclose(loss, (torch.stack(t2i).mean() + torch.stack(i2t).mean()) / 2)
    # making the two rows of scene 7 look alike costs nothing
    twins = images.clone()
    twins[1] = texts[0]
    fair = contrastive_loss(twins, texts, rows, image_keys, text_keys, scale)
    swapped = contrastive_loss(twins, texts, rows, torch.tensor([7, 6, 8, 9]), torch.tensor([70, 71, 90]), scale)
    assert fair < swapped  # counted as a negative, the look-alike row would raise the loss


def test_equal_texts_of_different_images_are_not_negatives():
    torch.manual_seed(3)
    images, texts = F.normalize(torch.randn(3, 8), dim=1), F.normalize(torch.randn(3, 8), dim=1)
    same = contrastive_loss(images, texts, torch.arange(3), torch.tensor([1, 2, 3]), torch.tensor([5, 5, 6]), torch.tensor(4.0))
    logits = 4.0 * texts @ images.T
    t2i = [-F.log_softmax(logits[0, [0, 2]], 0)[0], -F.log_softmax(logits[1, [1, 2]], 0)[0], -F.log_softmax(logits[2], 0)[2]]
    i2t = [-F.log_softmax(logits[[0, 2], 0], 0)[0], -F.log_softmax(logits[[1, 2], 1], 0)[0], -F.log_softmax(logits[:, 2], 0)[2]]
    assert torch.allclose(same, (torch.stack(t2i).mean() + torch.stack(i2t).mean()) / 2)


def test_the_temperature_is_learned_and_capped():
    model = build_model(small_spec(**ON, **{"contrastive.temperature": 0.05}))
    heads = model.contrastive_heads
    assert heads.logit_scale.requires_grad and math.isclose(float(heads.scale.detach()), 20.0, rel_tol=1e-5)
    with torch.no_grad():
        heads.logit_scale.fill_(10.0)
    assert math.isclose(float(heads.scale.detach()), 100.0, rel_tol=1e-5)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    generate_demo(out, n=12, seed=4, size=64)
    return out


def test_training_rows_pair_each_image_with_its_caption_and_share_its_key(demo):
    samples = load_data(demo / "train.jsonl", ("caption", "vqa")).samples
    codec = TextCodec.for_decoder(small_spec().decoder)
    data = TrainingData(samples, SampleEncoder(PairedTransform(32), (0.5,) * 3, (0.5,) * 3, {}), describe=True)
    items = [data[(i, i)] for i in range(len(samples))]
    captions = {s.image.source: s.caption for s in samples if s.task == "caption"}
    for sample, item in zip(samples, items):
        assert item.description == captions[sample.image.source]  # a question row too: its image's caption
    keys = {}
    for sample, item in zip(samples, items):
        assert keys.setdefault(sample.image.source, item.image_key) == item.image_key
    assert len(set(keys.values())) == len(keys)  # distinct images, distinct keys
    batch = Collator(codec, contrastive=True)(items[:8])
    assert batch.pairs.rows.tolist() == list(range(8)) and batch.pairs.image_keys.tolist() == [i.image_key for i in items[:8]]
    assert batch.pairs.ids[:, 0].eq(codec.begin_id).all()
    assert Collator(codec)(items[:8]).pairs is None  # without the pass, no texts are made

    grouped = TrainingData(samples, data.encoder, describe=True, by_image=True)  # an image with all its rows
    batch = Collator(codec, contrastive=True)([grouped[(i, i)] for i in range(4)])
    first_rows = [grouped.images[i][0] for i in range(4)]
    assert batch.pairs.rows.tolist() == [0, 1, 2, 3]  # one text per image, not one per row
    assert batch.pairs.image_keys.tolist() == [keys[samples[r].image.source] for r in first_rows]
    assert batch.input_ids.shape[0] == sum(len(grouped.images[i]) for i in range(4))

    questions_only = [s for s in samples if s.task == "vqa"]  # images whose caption rows are not in the data
    lonely = TrainingData(questions_only, data.encoder, describe=True)
    batch = Collator(codec, contrastive=True)([lonely[(i, i)] for i in range(4)])
    assert batch.pairs.rows.numel() == 0 and batch.pairs.image_keys.numel() == 4


def test_the_weight_flag_needs_the_pass_and_defaults_to_one_with_it(demo):
    config = TrainConfig(data=[str(demo / "train.jsonl")], out="-")
    assert config.contrastive_weight_for(small_spec()) == 0.0
    assert config.contrastive_weight_for(small_spec(**ON)) == 1.0
    weighted = TrainConfig(data=[str(demo / "train.jsonl")], out="-", contrastive_weight=0.5)
    assert weighted.contrastive_weight_for(small_spec(**ON)) == 0.5
    with pytest.raises(PrismerError, match=r"--contrastive-weight 0.5 needs a model with the contrastive pass.*contrastive.enabled=true"):
        weighted.contrastive_weight_for(small_spec())
    with pytest.raises(PrismerError, match="--contrastive-weight"):
        TrainConfig(data=[str(demo / "train.jsonl")], out="-", contrastive_weight=-1)


def test_a_causal_lm_decoder_refuses_the_pass_in_its_spec():
    with pytest.raises(PrismerError, match="decoder kind 'causal_lm' is a causal language model"):
        load_spec("smol", {"contrastive.enabled": True})


def test_each_loss_is_clipped_on_its_own_so_a_spike_in_one_leaves_the_other_whole():
    from prismer_core.train.engine import clip_each_and_sum

    shared, own = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
    spike = (30.0 * shared[0] + 40.0 * own[0])  # gradient norm 50: clipped to 1
    small = 0.1 * shared.sum()  # gradient norm 0.14: left as it is
    clip_each_and_sum([spike, small], [shared, own], max_norm=1.0)
    assert torch.allclose(shared.grad, torch.tensor([0.6 + 0.1, 0.1]), atol=1e-6)
    assert torch.allclose(own.grad, torch.tensor([0.8]), atol=1e-6)
    # one clip over the sum would have scaled the small loss's gradient down 50-fold with the spike
    shared.grad = own.grad = None
    (30.0 * shared[0] + 40.0 * own[0] + 0.1 * shared.sum()).backward()
    torch.nn.utils.clip_grad_norm_([shared, own], 1.0)
    assert shared.grad[1] < 0.01


def test_a_training_step_with_both_passes_clips_each_loss_unless_told_to_clip_the_sum(demo):
    from prismer_core.train.distributed import Distributed
    from prismer_core.train.engine import make_engine

    def clipped(grads, limit=0.5):
        norm = float(torch.nn.utils.get_total_norm([g for g in grads if g is not None]))
        return [torch.zeros(()) if g is None else g * min(1.0, limit / norm) for g in grads]

    samples = load_data(str(demo / "train.jsonl"), ("caption", "vqa")).samples[:8]
    used = {}
    for each in (True, False):
        torch.manual_seed(0)
        model = build_model(load_spec("tiny", {"image_size": 32, **ON}), {})
        config = TrainConfig(data=[str(demo / "train.jsonl")], out="-", grad_clip=0.5, clip_each_loss=each)
        engine = make_engine("plain", model, config, Distributed())
        assert engine.clips_each_loss is each
        data = TrainingData(samples, SampleEncoder(PairedTransform(32), model.image_mean, model.image_std, {}), describe=True)
        batch = Collator(TextCodec.for_decoder(model.spec.decoder), contrastive=True)([data[(i, i)] for i in range(8)])
        torch.manual_seed(1)  # the same dropout masks here and in the step
        model.train()
        generative, contrastive = engine.losses(engine.forward(model, batch))
        g_gen = torch.autograd.grad(generative, engine.trainable, retain_graph=True, allow_unused=True)
        g_con = torch.autograd.grad(contrastive, engine.trainable, allow_unused=True)
        if each:
            expected = [a + b for a, b in zip(clipped(g_gen), clipped(g_con))]
        else:
            expected = clipped([a if b is None else b if a is None else a + b for a, b in zip(g_gen, g_con)])
        torch.manual_seed(1)
        engine.step(batch)  # leaves the gradients it used in .grad
        for p, want in zip(engine.trainable, expected):
            assert torch.allclose(p.grad if p.grad is not None else torch.zeros(()), want, atol=1e-7)
        used[each] = torch.cat([p.grad.flatten() for p in engine.trainable if p.grad is not None])
    assert not torch.allclose(used[True], used[False])  # the two ways differ on this batch


def test_without_vision_gradient_the_contrastive_loss_leaves_the_vision_tokens_to_the_generative_one(demo):
    samples = load_data(str(demo / "train.jsonl"), ("caption", "vqa")).samples[:8]
    reached = {}
    for flag in (True, False):
        torch.manual_seed(0)
        model = build_model(load_spec("tiny", {"image_size": 32, **ON, "contrastive.vision_gradient": flag}), {})
        data = TrainingData(samples, SampleEncoder(PairedTransform(32), model.image_mean, model.image_std, {}), describe=True)
        batch = Collator(TextCodec.for_decoder(model.spec.decoder), contrastive=True)([data[(i, i)] for i in range(8)])
        output = model(**batch.arguments())
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        grads = torch.autograd.grad(output.contrastive_loss, [p for _, p in named], allow_unused=True)
        reached[flag] = {n for (n, _), g in zip(named, grads) if g is not None and g.abs().sum() > 0}
    for flag, names in reached.items():
        assert any(n.startswith("contrastive.image_pool.") for n in names)  # the pooler learns either way
        assert any(n.startswith("decoder.") for n in names)  # and so does the text pass
        assert any(n.startswith("encoder.") for n in names) is flag, f"vision_gradient={flag}"
