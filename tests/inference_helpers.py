"""One small model trained on the demo data, shared by the inference and evaluation tests.

The tiny spec shrunk further: 32-pixel images, a 2-layer decoder and a WordPiece vocabulary
made of the demo's own words (63 tokens instead of 30k), so that a few dozen steps on two CPU
cores give a model that writes demo-like captions and answers. It is trained once per test
session, with the edge expert run on the fly (as `prismer caption` then runs it again).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from prismer_core.demo import generate_demo
from prismer_core.text import VQA_TEMPLATE

CAPTION_PROMPT = "a picture of"
EXPERTS = ["edge"]
_TRAINED: dict[Path, "TrainedDemo"] = {}


@dataclass(frozen=True)
class TrainedDemo:
    demo: Path  # demo data: train/val/test.jsonl and images/
    run: Path  # the run folder
    checkpoint: Path  # its last checkpoint

    @property
    def test(self) -> Path:
        return self.demo / "test.jsonl"

    def test_rows(self) -> list[dict]:
        return [json.loads(line) for line in self.test.read_text().splitlines()]

    def test_images(self) -> list[Path]:
        return list(dict.fromkeys(self.demo / row["image"] for row in self.test_rows()))


def demo_tokenizer(folder: Path, manifest: Path) -> Path:
    """A BERT WordPiece tokenizer whose vocabulary is every word of the manifest."""
    from transformers import BertTokenizerFast

    texts = [CAPTION_PROMPT, VQA_TEMPLATE, "A photo of a {}."]
    for line in manifest.read_text().splitlines():
        row = json.loads(line)
        texts += [row.get("caption", ""), row.get("question", ""), row.get("answer", "")]
    words = sorted({w for text in texts for w in re.findall(r"[a-z0-9]+|[^\sa-z0-9]", text.lower())})
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocabulary)}).save_pretrained(folder)
    return folder


def small_spec(tokenizer: Path) -> dict:
    """Overrides of the tiny spec for the shared model: 32-pixel images, 2 decoder layers, one
    resampler layer with 8 latents, and ``tokenizer``'s vocabulary."""
    return {
        "image_size": 32, "decoder.layers": 2, "decoder.tokenizer": str(tokenizer),
        "decoder.vocab_size": _vocab_size(tokenizer),
        "decoder.max_positions": 64, "resampler.layers": 1, "resampler.latents": 8,
    }


def trained_demo(base: Path, steps: int = 40, experts: list[str] | None = None, contrastive: bool = False,
                 batch_size: int = 8, lr: float = 3e-3) -> TrainedDemo:
    """Generate the demo data under ``base`` and train on it (once per session and ``base``):
    with the edge expert run on the fly unless ``experts`` says otherwise, and with MaMMUT's
    contrastive pass beside the generative one when ``contrastive``."""
    if base in _TRAINED:
        return _TRAINED[base]
    from prismer_core.train import TrainConfig, train

    demo = base / "demo"
    generate_demo(demo, n=40, seed=3, size=64)
    tokenizer = demo_tokenizer(base / "tokenizer", demo / "train.jsonl")
    overrides = {
        **small_spec(tokenizer),
        **({"contrastive.enabled": True, "contrastive.dim": 64} if contrastive else {}),
    }
    config = TrainConfig(
        data=[str(demo / "train.jsonl")], out=str(base / "run"), experts=EXPERTS if experts is None else experts,
        tasks=["caption", "vqa"],
        spec_overrides=overrides, max_steps=steps, batch_size=batch_size, lr=lr, warmup_steps=2, workers=0,
        crop_scale=1.0, caption_prompt=CAPTION_PROMPT, log_every=steps, threads=1,
    )
    result = train(config, show_progress=False)
    _TRAINED[base] = TrainedDemo(demo, base / "run", result.checkpoint)
    return _TRAINED[base]


def _vocab_size(tokenizer: Path) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(tokenizer))
