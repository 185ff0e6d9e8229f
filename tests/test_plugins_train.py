"""A third-party expert in training: `prismer train --experts saliency,edge` with the example
package plugins/prismer-saliency pip-installed, as docs/plugins.md promises a plugin author."""

from __future__ import annotations

import json
import math

from safetensors.torch import load_file


STEM = "encoder.stems.saliency."


def test_train_builds_a_stem_for_an_installed_third_party_expert(plugin_site, cli, tmp_path):
    # A user who installed prismer and prismer-saliency (and none of the test plugins).
    user = dict(site=plugin_site, load="prismer,prismer-saliency")
    demo, run = tmp_path / "demo", tmp_path / "run"
    cli("data", "demo", "--out", demo, "--n", "10", "--size", "64", **user)
    result = cli(
        "train", "--data", demo / "train.jsonl", "--experts", "saliency,edge", "--task", "caption",
        "--out", run, "--max-steps", "2", "--checkpoint-every", "1",
        "--spec", "tiny", "--spec-set", "image_size=32", "--batch-size", "4", "--workers", "0", "--threads", "1",
        "--set", "saliency.size=32", **user,
    )
    assert "trained to step 2" in result.stdout

    # The run and its checkpoint record the plugin's expert with the version it declares
    # (and the run, the settings it ran with).
    record = json.loads((run / "run.json").read_text())
    assert record["experts"]["saliency"] == {"version": "1.0", "kind": "dense", "channels": 1, "has_instances": False,
                                             "settings": {"size": "32"}}
    checkpoint = run / "checkpoints" / "step-000002"
    recorded = {e["name"]: e for e in json.loads((checkpoint / "prismer.json").read_text())["experts"]}
    assert sorted(recorded) == ["edge", "saliency"]
    assert recorded["saliency"]["version"] == "1.0" and recorded["saliency"]["channels"] == 1

    # The model has a stem for it, taking the expert's one channel, and training moved its
    # weights (the optimiser skips parameters without a gradient, so the maps reached the loss).
    # (Loading a checkpoint back as a model is tested in test_train.py.)
    first = load_file(run / "checkpoints" / "step-000001" / "weights.safetensors")
    last = load_file(checkpoint / "weights.safetensors")
    assert last[STEM + "convs.0.weight"].shape[1] == 1
    stem = [name for name in last if name.startswith(STEM)]
    assert any(not first[name].equal(last[name]) for name in stem)

    losses = [row["loss"] for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in row]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
