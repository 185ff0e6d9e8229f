"""Checkpoints as users meet them: round trip, another expert set, damaged files, safe replacement."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from model_helpers import SIX, experts, make_batch, small_spec
from prismer_core.checkpoint import CheckpointError, read_checkpoint_info, save_checkpoint
from prismer_core.experts.contract import ExpertKind, ExpertSpec
from prismer_core.model import Prismer, build_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model with a dense and an instance expert, weights moved off their init, saved."""
    torch.manual_seed(0)
    model = build_model(small_spec(), experts("edge", "objdet")).eval()
    with torch.no_grad():
        for adaptor in model.encoder.adaptors:
            adaptor.up.weight.normal_(std=0.02)
    folder = tmp_path_factory.mktemp("checkpoints")
    encoder_file = folder / "label_encoder.npz"
    encoder_file.write_bytes(b"projection bytes")
    directory = save_checkpoint(
        model, folder / "run1", {"step": 120, "loss": 2.5},
        label_encoder="clip-text/ViT-B-16/pca64@abc123", label_encoder_file=encoder_file,
    )
    return model, directory


def test_round_trip_restores_outputs_and_records(trained):
    model, directory = trained
    restored = Prismer.from_pretrained(directory, experts=experts("edge", "objdet")).eval()
    batch = make_batch(model)
    ids = torch.randint(5, 1000, (2, 7))
    with torch.no_grad():
        assert torch.allclose(restored(batch, ids).logits, model(batch, ids).logits, atol=1e-6)
    info = read_checkpoint_info(directory)
    assert info.extra == {"step": 120, "loss": 2.5}
    assert info.label_encoder == "clip-text/ViT-B-16/pca64@abc123"
    assert info.label_encoder_file.read_bytes() == b"projection bytes"
    assert [(e.name, e.version) for e in info.experts.values()] == [("edge", "1.0"), ("objdet", "1.0")]
    assert info.spec == model.spec
    assert not [p for p in directory.parent.iterdir() if p.name.startswith(".")]  # no staging left behind
    without_experts_given = Prismer.from_pretrained(directory)  # the recorded set is used
    assert list(without_experts_given.expert_specs) == ["edge", "objdet"]


def test_loading_with_another_expert_set_is_a_clear_error(trained):
    _, directory = trained
    with pytest.raises(CheckpointError, match=r"trained with edge 1\.0, objdet 1\.0; .*missing here: objdet; not in the checkpoint: seg"):
        Prismer.from_pretrained(directory, experts=experts("edge", "seg"))
    newer = {**experts("edge"), "objdet": ExpertSpec("objdet", "2.0", ExpertKind.SEMANTIC, vocabulary=("car",), has_instances=True)}
    with pytest.raises(CheckpointError, match="objdet version is 2.0 here but 1.0 in the checkpoint"):
        Prismer.from_pretrained(directory, experts=newer)


def test_truncated_or_corrupt_weights_are_refused(trained, tmp_path):
    _, directory = trained
    truncated = shutil.copytree(directory, tmp_path / "truncated")
    weights = truncated / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match=r"weights\.safetensors is truncated or damaged \(\d+ bytes, expected \d+\)"):
        Prismer.from_pretrained(truncated)

    corrupt = shutil.copytree(directory, tmp_path / "corrupt")
    data = bytearray((corrupt / "weights.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (corrupt / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt \\(checksum mismatch\\)"):
        Prismer.from_pretrained(corrupt)

    # A size that matches the record but a header that does not match the file.
    lying = shutil.copytree(directory, tmp_path / "lying")
    info = json.loads((lying / "prismer.json").read_text())
    (lying / "weights.safetensors").write_bytes(b"\x10" + b"\x00" * 7 + b"{}" + b" " * (info["weights"]["bytes"] - 10))
    with pytest.raises(CheckpointError, match="not a valid safetensors file|truncated or damaged"):
        Prismer.from_pretrained(lying)

    with pytest.raises(CheckpointError, match="is not a Prismer checkpoint"):
        Prismer.from_pretrained(tmp_path)


def test_saving_replaces_a_checkpoint_but_never_other_folders(trained, tmp_path):
    model, _ = trained
    target = save_checkpoint(model, tmp_path / "ckpt", {"step": 1})
    save_checkpoint(model, target, {"step": 2})
    assert read_checkpoint_info(target).extra == {"step": 2}
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "cat.jpg").write_bytes(b"jpeg")
    with pytest.raises(CheckpointError, match="exists and is not a Prismer checkpoint; refusing to replace it"):
        save_checkpoint(model, precious)
    assert (precious / "cat.jpg").read_bytes() == b"jpeg"
    with pytest.raises(CheckpointError, match="JSON-serialisable"):
        save_checkpoint(model, tmp_path / "other", {"tensor": torch.zeros(1)})
    assert not (tmp_path / "other").exists()


def test_tiny_checkpoints_hold_every_weight_because_nothing_comes_from_a_source(tmp_path):
    torch.manual_seed(0)
    model = build_model(small_spec(), experts(*SIX))
    directory = save_checkpoint(model, tmp_path / "tiny")
    info = json.loads((directory / "prismer.json").read_text())
    assert info["weights"]["tensors"] == len(model.state_dict())
