"""A frozen causal LM as the language side, on a tiny random Llama saved as a folder: it loads
through the same path as a real one, reads the mapper's prefix as transformers' own Llama does,
generates with its key/value cache, trains without moving, and says clearly what is wrong."""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn.functional as F
import yaml

from lm_helpers import save_tiny_llama, tiny_lm_spec
from model_helpers import experts, make_batch
from prismer_core.checkpoint import WEIGHTS_FILE, CheckpointError
from prismer_core.errors import PrismerError
from prismer_core.model import Prismer, build_model
from prismer_core.specs import spec_from_dict
from prismer_core.text import IGNORE_INDEX, CausalLMCodec, TextCodec, task_prompt

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    # a large init spread, so that a random LM's tokens depend on what it reads
    return save_tiny_llama(tmp_path_factory.mktemp("llama"), initializer_range=0.3)


@pytest.fixture(scope="module")
def model(llama):
    torch.manual_seed(0)
    return build_model(tiny_lm_spec(llama), experts("edge", "objdet")).eval()


@pytest.fixture(scope="module")
def codec(model) -> CausalLMCodec:
    return TextCodec.for_decoder(model.spec.decoder)


def test_the_lm_loads_by_folder_and_only_the_vision_side_and_mapper_train(llama, model):
    from transformers import LlamaForCausalLM

    saved = LlamaForCausalLM.from_pretrained(llama).state_dict()
    ours = model.decoder.lm.state_dict()
    assert saved.keys() == ours.keys() and all(torch.equal(saved[k], ours[k]) for k in saved)
    report = model.parameter_report()
    assert report["decoder.lm"].trainable == 0 and report["decoder.lm"].total > 0
    assert report["decoder.mapper"].trainable == report["decoder.mapper"].total > 0
    assert report["vision.stems"].trainable > 0 and report["vision.resampler"].trainable > 0
    assert {f"decoder.lm.{k}" for k in saved} <= model.pretrained_names  # found again, never copied
    assert model.language_model_identity["resolved"] == str(llama) and len(model.language_model_identity["sha256"]) == 64
    prefix = model.decoder.mapper(model.encode_images(make_batch(model)))
    assert prefix.shape == (2, 4, 64)  # decoder.mapper.queries prefix embeddings in the LM's width
    token_rms = model.decoder.lm.get_input_embeddings().weight.std()
    assert 0.3 < float(prefix.detach().std() / token_rms) < 3  # the prefix starts at the scale of real tokens


def test_logits_are_transformers_llama_reading_prefix_then_text(llama, model, codec):
    """Our two passes (prefix with the LM's cache, then text) give the logits of one
    LlamaForCausalLM call on [prefix embeddings ; token embeddings], padding included."""
    from transformers import LlamaForCausalLM

    reference = LlamaForCausalLM.from_pretrained(llama).eval()
    batch = make_batch(model)
    text = codec.training_batch([task_prompt("vqa", "what colour is the star?"), ""], ["red", "two shapes of blue"])
    with torch.no_grad():
        prefix = model.decoder.mapper(model.encode_images(batch))
        embeds = torch.cat([prefix, reference.get_input_embeddings()(text.input_ids)], dim=1)
        mask = torch.cat([torch.ones(2, prefix.shape[1], dtype=torch.long), text.attention_mask], dim=1)
        theirs = reference(inputs_embeds=embeds, attention_mask=mask).logits[:, prefix.shape[1] :]
        ours = model(batch, text.input_ids, text.attention_mask).logits
        real = text.attention_mask.bool()
        assert torch.allclose(ours[real], theirs[real], atol=1e-4)
        out = model(batch, text.input_ids, text.attention_mask, labels=text.labels)
    targets = F.pad(text.labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    assert torch.allclose(out.loss, F.cross_entropy(theirs[targets != IGNORE_INDEX], targets[targets != IGNORE_INDEX]), atol=1e-4)


def test_generation_with_the_lm_cache_equals_recomputing_and_padding_changes_nothing(model, codec):
    batch = make_batch(model, batch_size=2, seed=3)
    prompts = codec.prompt_batch(["", task_prompt("vqa", "how many shapes are there?")])  # left-padded
    for beams in (1, 3):
        cached = model.generate(batch, prompts, end_token_id=codec.end_id, num_beams=beams, max_new_tokens=6)
        assert cached == model.generate(batch, prompts, end_token_id=codec.end_id, num_beams=beams, max_new_tokens=6,
                                        use_cache=False)
        alone = [model.generate(batch.select(i), codec.prompt_batch([p]), end_token_id=codec.end_id, num_beams=beams,
                                max_new_tokens=6)[0] for i, p in enumerate(["", task_prompt("vqa", "how many shapes are there?")])]
        assert cached == alone
    assert len(set(map(tuple, cached))) == 2  # the two images and prompts are written differently


def test_scores_are_each_candidates_log_likelihood(model, codec):
    batch = make_batch(model, seed=5)
    prompt = task_prompt("vqa", "what colour is the circle?")
    candidates = ["red", "blue circle", "two"]
    scores = model.score(batch, codec.prompt_batch([prompt, prompt]), codec.candidate_batch([prompt], candidates))
    assert scores.shape == (2, 3)
    text = codec.training_batch([prompt] * 3, candidates)
    with torch.no_grad():
        for image in range(2):
            out = model(batch.select([image] * 3), text.input_ids, text.attention_mask)
            log_probs = F.log_softmax(out.logits[:, :-1], dim=-1)
            targets = text.labels[:, 1:]
            picked = log_probs.gather(2, targets.clamp(min=0)[..., None])[..., 0].masked_fill(targets == IGNORE_INDEX, 0)
            assert torch.allclose(scores[image], picked.sum(1), atol=1e-4)


def test_prompts_go_through_the_chat_template_or_a_plain_prefix(llama, codec):
    tokenizer = codec.tokenizer
    assert codec.chat and codec.prompt_text("what is written?") == "[CLS] user : what is written? [SEP] [CLS] assistant :"
    assert codec.prompt_text("") == "[CLS] user : Describe the image. [SEP] [CLS] assistant :"  # captions are asked for
    prompt = task_prompt("vqa", "what shape is red?")
    rows = codec.training_batch([prompt], ["circle"])
    learnt = (rows.labels[0] != IGNORE_INDEX).nonzero()[0, 0].item()
    assert rows.input_ids[0, :learnt].tolist() == codec.prompt_tokens(prompt)  # what inference sends
    assert rows.input_ids[0, learnt:].tolist() == [*tokenizer("circle", add_special_tokens=False)["input_ids"], codec.end_id]
    with_system = CausalLMCodec(tokenizer, system="be brief")
    assert with_system.prompt_text("a").startswith("[CLS] system : be brief [SEP]")
    plain = CausalLMCodec(tokenizer, template="plain")
    assert plain.prompt_tokens("a picture of") == [tokenizer.bos_token_id, *tokenizer("a picture of", add_special_tokens=False)["input_ids"]]
    assert plain.continuation_tokens("a picture of", "two")[-1] == codec.end_id


def test_training_steps_move_the_mapper_and_never_the_frozen_lm(model):
    import copy

    from prismer_core.train.config import TrainConfig
    from prismer_core.train.distributed import setup_distributed
    from prismer_core.train.engine import make_engine

    model = copy.deepcopy(model).train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("decoder.lm.") for n in frozen) and not any(n.startswith("decoder.lm.") for n in trained)
    codec = TextCodec.for_decoder(model.spec.decoder)
    engine = make_engine("plain", model, TrainConfig(data=["x"], out="x", lr=1e-3, max_steps=3), setup_distributed("cpu"))
    from prismer_core.data.dataset import Batch

    text = codec.training_batch(["", task_prompt("vqa", "what colour?")], ["two red shapes", "red"])
    batch = Batch(make_batch(model), text.input_ids, text.attention_mask, text.labels, ["caption", "vqa"], [])
    losses = [engine.step(batch) for _ in range(3)]
    assert losses[-1] < losses[0]
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], value) for n, value in frozen.items())  # bit-identical
    assert not torch.equal(after["decoder.mapper.project_out.weight"], trained["decoder.mapper.project_out.weight"])


def test_lora_adapters_train_inside_the_frozen_lm(llama, tmp_path):
    pytest.importorskip("peft")
    torch.manual_seed(0)
    model = build_model(tiny_lm_spec(llama, lora={"rank": 2, "target_modules": ["q_proj", "v_proj"]}), {})
    report = model.parameter_report()
    assert report["decoder.lora"].trainable == report["decoder.lora"].total == 2 * 2 * ((64 + 64) + (64 + 32))  # layers x rank x (in + out) of q, v
    assert report["decoder.lm"].trainable == 0
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_()  # "trained"
    directory = model.save_pretrained(tmp_path / "lora")
    from safetensors.torch import load_file

    saved = load_file(str(directory / WEIGHTS_FILE))
    assert any("lora_B" in n for n in saved) and not any(n.startswith("decoder.lm.") and "lora_" not in n for n in saved)
    restored = Prismer.from_pretrained(directory).eval()
    batch, ids = make_batch(model), torch.randint(5, 40, (2, 5))
    with torch.no_grad():
        assert torch.allclose(restored(batch, ids).logits, model.eval()(batch, ids).logits, atol=1e-5)


def test_checkpoints_keep_what_trained_and_find_the_lm_again(llama, model, tmp_path):
    directory = model.save_pretrained(tmp_path / "ckpt")
    from safetensors.torch import load_file

    saved = load_file(str(directory / WEIGHTS_FILE))
    assert saved and not any(name.startswith("decoder.lm.") for name in saved)
    assert any(name.startswith("decoder.mapper.") for name in saved)
    info = json.loads((directory / "prismer.json").read_text())["language_model"]
    assert info == model.language_model_identity
    restored = Prismer.from_pretrained(directory).eval()
    batch, ids = make_batch(model), torch.randint(5, 40, (2, 5))
    with torch.no_grad():
        assert torch.equal(restored(batch, ids).logits, model(batch, ids).logits)

    # another LM in the same place: the hash tells
    other = tmp_path / "other"
    save_tiny_llama(other, seed=9, initializer_range=0.3)
    spec = yaml.safe_load((directory / "spec.yaml").read_text())
    moved = tmp_path / "ckpt-other"
    import shutil

    shutil.copytree(directory, moved)
    spec["decoder"]["weights"] = str(other)
    (moved / "spec.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(CheckpointError, match=r"was trained on the language model .* but .*other has sha256 .*another model"):
        Prismer.from_pretrained(moved)
    spec["decoder"]["weights"] = str(tmp_path / "gone")
    (moved / "spec.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(CheckpointError, match=r"needs its language model: .*gone'?: no such file or folder"):
        Prismer.from_pretrained(moved)


# -- as a user runs it ----------------------------------------------------------------------------


def write_spec(path, spec) -> str:
    path.write_text(yaml.safe_dump(spec.to_dict()))
    return str(path)


def test_train_then_caption_answer_rank_and_eval_through_the_cli(llama, cli, tmp_path):
    from prismer_core.demo.scenes import generate_demo

    demo = tmp_path / "demo"
    generate_demo(demo, n=12, seed=2, size=64)
    spec = write_spec(tmp_path / "lm.yaml", tiny_lm_spec(llama))
    run = tmp_path / "run"
    cli("train", "--spec", spec, "--data", demo / "train.jsonl", "--experts", "edge", "--task", "caption,vqa",
        "--out", run, "--max-steps", "3", "--batch-size", "4", "--workers", "0", "--threads", "1", "--lr", "1e-3")
    checkpoint = json.loads((run / "checkpoints" / "latest.json").read_text())
    saved = next((run / "checkpoints").glob("*/prismer.json"))
    assert json.loads(saved.read_text())["language_model"]["resolved"] == str(llama), checkpoint
    image = next((demo / "images" / "test").glob("*.png"))
    out = tmp_path / "captions.jsonl"
    cli("caption", "--checkpoint", run, image, "--out", out, "--beams", "3")
    assert len(out.read_text().splitlines()) == 1 and "caption" in json.loads(out.read_text())
    answered = cli("vqa", "--checkpoint", run, image, "what colour is the star?", "--beams", "1")
    assert answered.output.strip()
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps(["red", "blue", "two"]))
    ranked = cli("vqa", "--checkpoint", run, image, "what colour is the star?", "--answers", answers, "--top", "3")
    assert all(a in ranked.output for a in ("red", "blue", "two"))
    report = tmp_path / "eval.json"
    cli("eval", "--checkpoint", run, "--data", demo / "test.jsonl", "--task", "vqa", "--limit", "4", "--report", report,
        "--beams", "1")
    assert "accuracy" in json.dumps(json.loads(report.read_text()))


def test_bad_language_models_are_one_line_errors(llama, cli, tmp_path, monkeypatch):
    from lm_helpers import write_gguf
    from prismer_core.demo.scenes import generate_demo

    demo = tmp_path / "demo"
    generate_demo(demo, n=4, seed=2, size=64)
    whole = write_gguf(tmp_path / "whole.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(whole[:-100])
    (tmp_path / "header.gguf").write_bytes(whole[:40])
    write_gguf(tmp_path / "q8k.gguf", "Q8_K")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    narrow = tiny_lm_spec(llama).to_dict()
    narrow["decoder"]["config"]["hidden_size"] = 32
    cases = [
        (tiny_lm_spec(tmp_path / "cut.gguf"), r"GGUF file .*cut\.gguf is truncated: its tensors end at byte [\d,]+, the file has [\d,]+ bytes"),
        (tiny_lm_spec(tmp_path / "header.gguf"), r"GGUF file .*header\.gguf is truncated or damaged"),
        (tiny_lm_spec(tmp_path / "q8k.gguf"), r"GGUF file .*q8k\.gguf: tensor 'blk\.0\.attn_q\.weight' is quantised as Q8_K, which cannot be dequantised"),
        (tiny_lm_spec("nobody/no-such-lm"), r"cannot load the (tokenizer|language model) 'nobody/no-such-lm' from the Hugging Face cache .*without internet, put a local folder or \.gguf file"),
        (spec_from_dict(narrow, "narrow"), r"is 64 wide, but the mapper writes 32-wide prefix embeddings \(decoder\.config\.hidden_size\): set it to 64"),
    ]
    for number, (spec, message) in enumerate(cases):
        out = tmp_path / f"run{number}"
        result = cli("train", "--spec", write_spec(tmp_path / f"bad{number}.yaml", spec), "--data", demo / "train.jsonl",
                     "--out", out, "--max-steps", "1", "--workers", "0", check=False)
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert result.exit_code == 1 and len(errors) == 1 and re.search(message, errors[0]), result.output
        assert not (out / "checkpoints").exists()
    heads = tiny_lm_spec(llama).to_dict()
    heads["decoder"]["mapper"].update(width=30, heads=4)
    with pytest.raises(PrismerError, match=r"decoder\.mapper: .*width \(30\) must be a multiple of heads \(4\)"):
        spec_from_dict(heads, "heads")
