"""`prismer model info` for the three bundled specs, offline, as a user types it."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from prismer_cli.main import app

SIX = "edge,ocr,depth=dense:1,normal=dense:3,seg=semantic,objdet=semantic+instances"


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def info(spec: str, experts: str = SIX) -> dict:
    result = run("model", "info", "--spec", spec, "--experts", experts, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_base_counts_match_the_paper_design():
    report = info("base")
    parts = report["parts"]
    assert parts["vision.backbone"] == {"total": 85_054_464, "trainable": 0}  # ViT-B/16 blocks, frozen
    assert parts["decoder.backbone"]["trainable"] == 0 and parts["decoder.backbone"]["total"] == 85_054_464
    assert parts["decoder.embeddings"]["total"] == 39_000_576  # roberta-base: 50265 x 768 + 514 x 768 + ...
    # the parts the reference code trains, too (about 160M in the paper; our semantic stems,
    # a max-pooled projection, hold about 3.5M parameters fewer each than convolution stacks)
    assert 130e6 < report["trainable"] < 170e6
    assert parts["vision.stems"]["trainable"] < 20e6
    assert report["vision_tokens"] == 1 + 14 * 14 + 64


def test_large_and_tiny_specs_and_prismerz():
    large = info("large")
    assert large["vision_tokens"] == 1 + 24 * 24 + 64  # ViT-L/14 at 336 px
    assert large["parts"]["decoder.backbone"]["total"] > 300e6  # roberta-large's 24 layers
    tiny = info("tiny")
    assert tiny["trainable"] == tiny["total"]  # the offline default trains everything
    assert tiny["output_vocabulary"] == large["output_vocabulary"] == "full"  # the decoder writes any token
    prismerz = info("base", experts="")
    assert "vision.stems" not in prismerz["parts"] and "vision.resampler" not in prismerz["parts"]
    assert prismerz["vision_tokens"] == 1 + 14 * 14


def test_the_frozen_llm_spec_trains_under_a_tenth_of_its_parameters():
    """smol: SmolLM2-135M frozen, counted from the spec's config without reading the GGUF file."""
    report = info("smol")
    parts = report["parts"]
    assert parts["decoder.lm"] == {"total": 134_515_008, "trainable": 0}  # SmolLM2-135M, tied embeddings
    assert parts["decoder.mapper"]["trainable"] == parts["decoder.mapper"]["total"] > 0
    assert "decoder.lora" not in parts  # LoRA is off by default
    assert report["trainable"] / report["total"] <= 0.10  # 2.7% with the six experts
    assert report["vision_tokens"] == 1 + 14 * 14 + 64


def test_table_output_and_clear_errors():
    table = run("model", "info", "--spec", "base", "--experts", "edge,seg=semantic")
    assert table.exit_code == 0 and "vision.resampler" in table.output and "trainable:" in table.output
    unknown = run("model", "info", "--spec", "base", "--experts", "edge,depthh")
    assert unknown.exit_code == 1
    assert "expert 'depthh' is not installed" in unknown.output and "depthh=dense:1" in unknown.output
    bad = run("model", "info", "--spec", "base", "--experts", "depth=dense:x")
    assert bad.exit_code == 1 and "cannot read expert description depth='dense:x'" in bad.output
    missing = run("model", "info", "--spec", "huge")
    assert missing.exit_code == 1 and "unknown model spec 'huge'" in missing.output


def test_bundled_specs_are_listed():
    result = run("model", "specs")
    assert result.exit_code == 0
    assert [line.split()[0] for line in result.output.splitlines()] == ["base", "large", "smol", "tiny"]
