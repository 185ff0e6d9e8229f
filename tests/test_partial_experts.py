"""Partial experts (issue 16), as users meet them: `prismer train --expert-dropout` and
`--init-from`, running a checkpoint with `--missing-experts drop`, `prismer experts check`, the
model card in every checkpoint, checkpoints by Hugging Face Hub id, and resume states that are
never unpickled blindly.

One small parent run (edge) and one child (`--init-from` the parent, adding the saliency
example plugin, with expert dropout) are trained once for the module.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from plugin_helpers import run_cli
from prismer_core.checkpoint import read_checkpoint_info
from prismer_core.data.dataset import TrainingData
from prismer_core.errors import PrismerError
from prismer_core.registry import LOAD_PLUGINS_ENV, get_registry

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["--spec", "tiny", "--spec-set", "image_size=32", "--batch-size", "4", "--workers", "0", "--threads", "1"]
USER = "prismer,prismer-saliency"  # a user with prismer and the saliency plugin installed
QUESTION = "how many shapes are there?"


@pytest.fixture(scope="module")
def runs(plugin_site, tmp_path_factory):
    """(demo folder, parent run with edge, child run: --init-from parent, edge + saliency)."""
    base = tmp_path_factory.mktemp("partial")
    demo, parent, child = base / "demo", base / "parent", base / "child"
    patch = pytest.MonkeyPatch()

    def run(*args):
        return run_cli(patch, *args, site=plugin_site, load=USER)

    run("data", "demo", "--out", demo, "--n", "12", "--size", "64")
    run("train", "--data", demo / "train.jsonl", "--experts", "edge", "--task", "caption,vqa", "--out", parent,
        "--max-steps", "3", *SMALL)
    result = run("train", "--data", demo / "train.jsonl", "--init-from", parent, "--experts", "edge,saliency",
                 "--expert-dropout", "0.5", "--task", "caption,vqa", "--out", child, "--max-steps", "2",
                 "--threads", "1", "--batch-size", "4", "--workers", "0", "--set", "saliency.size=32")
    assert "new: saliency" in result.output
    return SimpleNamespace(demo=demo, parent=parent, child=child, site=plugin_site,
                           parent_checkpoint=parent / "checkpoints" / "step-000003",
                           child_checkpoint=child / "checkpoints" / "step-000002",
                           image=demo / json.loads((demo / "test.jsonl").read_text().splitlines()[0])["image"])


# -- 1. expert dropout ------------------------------------------------------------------------


def test_expert_dropout_is_recorded_and_draws_each_expert_by_the_samples_seed(runs):
    record = json.loads((runs.child / "run.json").read_text())
    assert record["config"]["expert_dropout"] == 0.5
    card = (runs.child_checkpoint / "README.md").read_text()
    assert "expert dropout 0.5" in card

    encoder = SimpleNamespace(experts={"edge": None, "saliency": None})
    data = TrainingData([], encoder, labels=object(), expert_dropout=0.3)
    draws = [data.dropped_experts(seed) for seed in range(2000)]
    assert all(torch.equal(draws[7][name], again) for name, again in data.dropped_experts(7).items())  # by the seed
    for name in ("edge", "saliency"):
        rate = sum(bool(d[name]) for d in draws) / len(draws)
        assert 0.26 < rate < 0.34, (name, rate)
    both = sum(bool(d["edge"]) and bool(d["saliency"]) for d in draws) / len(draws)
    assert 0.06 < both < 0.12  # drawn on their own: about 0.3 * 0.3
    with pytest.raises(PrismerError, match=r"expert dropout must lie in \[0, 1\), got 1.0"):
        TrainingData([], encoder, labels=object(), expert_dropout=1.0)


@pytest.mark.parametrize("value", ["1", "-0.1"])
def test_expert_dropout_outside_0_1_is_one_line_and_writes_nothing(cli, runs, tmp_path, value):
    out = tmp_path / "run"
    result = cli("train", "--data", runs.demo / "train.jsonl", "--experts", "edge", "--expert-dropout", value,
                 "--out", out, *SMALL, check=False)
    assert result.exit_code != 0
    message = result.output.strip()
    assert message.startswith("Error: --expert-dropout") and "\n" not in message
    assert not out.exists()


# -- 3. a new expert for a trained model ------------------------------------------------------


def test_init_from_loads_every_parent_weight_exactly_and_adds_a_fresh_stem(runs, monkeypatch):
    from prismer_core.train.init_from import model_from_parent, read_parent

    monkeypatch.syspath_prepend(str(runs.site))
    monkeypatch.setenv(LOAD_PLUGINS_ENV, USER)
    get_registry.cache_clear()
    try:
        specs = get_registry().require(["edge", "saliency"], live=True, settings={"saliency": {"size": "32"}})
        parent = read_parent(str(runs.parent), None, {}, specs)
        torch.manual_seed(0)
        model = model_from_parent(parent, specs)
    finally:
        get_registry.cache_clear()
    assert parent.info.directory == runs.parent_checkpoint and parent.new_experts == ("saliency",)
    saved = load_file(runs.parent_checkpoint / "weights.safetensors")
    state = model.state_dict()
    assert saved and all(torch.equal(state[name], tensor) for name, tensor in saved.items())
    fresh = [name for name in state if name.startswith("encoder.stems.saliency.")]
    assert fresh and not any(name in saved for name in fresh)

    # The child run and its checkpoints record their parent, with the weights' checksum.
    record = json.loads((runs.child / "run.json").read_text())
    sha = hashlib.sha256((runs.parent_checkpoint / "weights.safetensors").read_bytes()).hexdigest()
    assert record["parent"] == {"checkpoint": str(runs.parent_checkpoint), "step": 3, "experts": ["edge"],
                                "new_experts": ["saliency"], "weights_sha256": sha}
    child = read_checkpoint_info(runs.child_checkpoint)
    assert sorted(child.experts) == ["edge", "saliency"]
    assert child.extra["training"]["parent"]["checkpoint"] == str(runs.parent_checkpoint)


def test_init_from_bad_sources_are_one_line_and_write_nothing(cli, runs, tmp_path):
    out = tmp_path / "run"
    data = ["--data", runs.demo / "train.jsonl", "--out", out, "--threads", "1", "--workers", "0"]
    cases = [
        (["--init-from", tmp_path / "nothing", "--experts", "edge"], "is not a Prismer checkpoint (it does not exist)"),
        (["--init-from", runs.parent, "--experts", "edge", "--spec", "tiny", "--spec-set", "image_size=64"],
         "the checkpoint is of another spec than this run (image_size: 32 there, 64 here)"),
        (["--init-from", runs.parent, "--experts", "depth,edge"], "depth"),  # not ready here: refused before any work
        (["--init-from", runs.child, "--experts", "edge"], "--experts must keep every one of them (left out: saliency)"),
    ]
    for args, expected in cases:
        result = cli("train", *data, *args, site=runs.site, load=USER, check=False)
        message = result.output.strip()
        assert result.exit_code == 1 and message.startswith("Error:") and "\n" not in message, message
        assert expected in message, message
        assert not out.exists()


# -- 2. running with fewer experts ------------------------------------------------------------


def test_missing_expert_is_refused_by_default_and_dropped_on_request(cli, runs, tmp_path):
    # The saliency plugin is installed but PRISMER_LOAD_PLUGINS hides it: like a user without it.
    hidden = dict(site=runs.site, load="prismer")
    refused = cli("vqa", "--checkpoint", runs.child, runs.image, QUESTION, check=False, **hidden)
    message = refused.output.strip()
    assert refused.exit_code == 1 and "\n" not in message
    assert "'saliency' is not installed" in message and "--missing-experts drop" in message

    answered = cli("vqa", "--checkpoint", runs.child, runs.image, QUESTION, "--missing-experts", "drop", **hidden)
    assert "running without saliency (trained with edge, saliency; using edge)" in answered.stderr
    assert answered.stderr.count("running without") == 1
    assert answered.stdout.strip()  # an answer

    out = tmp_path / "captions.jsonl"
    cli("caption", "--checkpoint", runs.child, runs.image, "--missing-experts", "drop", "--out", out, **hidden)
    assert json.loads(out.read_text())["experts"] == ["edge"]

    bad = cli("caption", "--checkpoint", runs.child, runs.image, "--missing-experts", "ignore", check=False, **hidden)
    assert bad.exit_code == 1 and "missing experts 'ignore': choose one of refuse, drop" in bad.output


def test_eval_with_a_dropped_expert_records_the_experts_that_ran_and_updates_the_card(cli, runs, tmp_path):
    from huggingface_hub import ModelCard

    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(runs.child_checkpoint, checkpoint)
    report = tmp_path / "report.json"
    result = cli("eval", "--checkpoint", checkpoint, "--data", runs.demo / "test.jsonl", "--task", "vqa",
                 "--limit", "4", "--missing-experts", "drop", "--report", report, "--update-card",
                 site=runs.site, load="prismer")
    written = json.loads(report.read_text())
    assert written["experts"]["used"] == ["edge"] and list(written["experts"]["dropped"]) == ["saliency"]
    assert "without saliency" in result.stdout

    card = ModelCard.load(checkpoint / "README.md")
    figures = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert "VQA accuracy, experts: edge" in figures
    assert figures["VQA accuracy, experts: edge"] == pytest.approx(written["metrics"]["VQA accuracy"], abs=1e-5)


def test_predictor_drops_what_cannot_run_and_says_why(runs, monkeypatch):
    from prismer_core.inference import Predictor

    monkeypatch.syspath_prepend(str(runs.site))
    monkeypatch.setenv(LOAD_PLUGINS_ENV, "prismer")
    get_registry.cache_clear()
    try:
        with pytest.raises(PrismerError, match="'saliency' is not installed"):
            Predictor.from_checkpoint(runs.child)
        predictor = Predictor.from_checkpoint(runs.child, missing_experts="drop")
        answers = predictor.answer([runs.image], [QUESTION], num_beams=1, max_new_tokens=3)
    finally:
        get_registry.cache_clear()
    assert predictor.experts == ["edge", "saliency"] and predictor.experts_used == ["edge"]
    assert "PRISMER_LOAD_PLUGINS" in predictor.dropped_experts["saliency"]
    batch = predictor.inputs([runs.image])
    assert batch.present["saliency"].tolist() == [False] and not batch.experts["saliency"].any()
    assert len(answers) == 1

    # `prismer serve --missing-experts drop` builds its page on such a predictor: it says so.
    from fastapi.testclient import TestClient

    from prismer_core.serve import Viewer
    from prismer_core.serve.web import create_app

    with TestClient(create_app(Viewer(predictor))) as client:
        info = client.get("/api/info").json()
    assert info["model_experts"] == ["edge", "saliency"] and info["model_experts_used"] == ["edge"]
    assert list(info["dropped_experts"]) == ["saliency"]


# -- 4. sharing a checkpoint ------------------------------------------------------------------


def test_every_checkpoint_has_a_model_card_naming_its_experts_packages(runs):
    from huggingface_hub import ModelCard

    card = ModelCard.load(runs.child_checkpoint / "README.md")
    assert card.data.library_name == "prismer"
    assert "prismer-expert-saliency" in card.data.tags
    saliency = next(e for e in json.loads((runs.child_checkpoint / "prismer.json").read_text())["experts"]
                    if e["name"] == "saliency")
    version = saliency["provided_by"]["version"]
    assert saliency["provided_by"]["distribution"] == "prismer-saliency"
    assert f"pip install prismer-saliency=={version}" in card.text
    assert f"started from `{runs.parent_checkpoint}`" in card.text and "new experts: saliency" in card.text
    assert "| edge | 1.0 | dense | 1 | prismer " in card.text  # the built-in expert, provided by prismer itself


def test_experts_check_names_whats_missing_and_the_pip_line(cli, runs, tmp_path):
    everything = cli("experts", "check", runs.child, site=runs.site, load=USER)
    assert "all 2 experts can run here" in everything.stdout

    hidden = cli("experts", "check", runs.child, "--json", site=runs.site, load="prismer", check=False)
    assert hidden.exit_code == 1
    rows = {row["name"]: row for row in json.loads(hidden.stdout)}
    assert rows["edge"]["usable"] and rows["saliency"]["state"] == "hidden"

    # A checkpoint shared by someone who had a plugin this machine has never installed.
    from model_helpers import small_spec
    from prismer_core.checkpoint import save_checkpoint
    from prismer_core.experts.contract import ExpertKind, ExpertSpec
    from prismer_core.model import build_model

    sketch = ExpertSpec("sketch", "2.0", ExpertKind.DENSE, channels=1)
    shared = save_checkpoint(build_model(small_spec(), {"sketch": sketch}), tmp_path / "shared")
    info = json.loads((shared / "prismer.json").read_text())
    assert info["experts"][0]["provided_by"] is None  # not installed here when saved: not recorded
    info["experts"][0]["provided_by"] = {"distribution": "prismer-sketch", "version": "2.0.1"}  # as its author's was
    (shared / "prismer.json").write_text(json.dumps(info))
    absent = cli("experts", "check", shared, check=False)
    assert absent.exit_code == 1
    assert "0 of 1 experts can run here; missing: sketch" in absent.stderr
    assert "pip install prismer-sketch==2.0.1" in absent.stderr and "--missing-experts drop" in absent.stderr


def _hub_cache(cache: Path, repo: str, checkpoint: Path, commit: str = "0" * 39 + "1") -> Path:
    """``checkpoint`` laid out as huggingface_hub caches a snapshot of ``repo``: blobs named by
    their hash, snapshots/<commit>/ holding links to them, refs/main naming the commit."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "blobs").mkdir(parents=True)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for path in sorted(checkpoint.iterdir()):
        if path.is_file():
            blob = hashlib.sha256(path.read_bytes()).hexdigest()
            shutil.copyfile(path, root / "blobs" / blob)
            (snapshot / path.name).symlink_to(Path("..") / ".." / "blobs" / blob)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    return snapshot


def test_a_hub_id_resolves_from_the_hub_cache_offline(runs, tmp_path):
    cache = tmp_path / "hub"
    snapshot = _hub_cache(cache, "alice/prismer-demo", runs.parent_checkpoint)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop(LOAD_PLUGINS_ENV, None)
    script = (
        "import sys; from prismer_core.inference import Predictor\n"
        "p = Predictor.from_checkpoint('alice/prismer-demo')\n"
        "print(p.checkpoint); print(p.caption([sys.argv[1]], num_beams=1, max_new_tokens=3)[0])\n"
        "from prismer_cli.main import app; app(['experts', 'check', 'alice/prismer-demo@main'])\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(runs.image)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert Path(lines[0]) == snapshot
    assert "all 1 experts can run here" in done.stdout

    missing = subprocess.run([sys.executable, "-m", "prismer_cli.main", "experts", "check", "alice/other"], env=env,
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 1
    assert missing.stderr.strip().startswith("Error: alice/other is neither a folder here nor a Hugging Face Hub snapshot")
    assert "\n" not in missing.stderr.strip()


def test_pickled_resume_state_is_read_with_weights_only_or_refused(tmp_path):
    from prismer_core.train.state import TrainingStateError, load_pickled_state

    plain = tmp_path / "optim_states.pt"
    torch.save({"step": 3, "exp_avg": torch.ones(2), "groups": [{"lr": 0.1}]}, plain)
    assert torch.equal(load_pickled_state(plain)["exp_avg"], torch.ones(2))

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    hostile = tmp_path / "hostile.pt"
    torch.save({"state": Payload()}, hostile)
    with pytest.raises(TrainingStateError, match="refusing to unpickle it"):
        load_pickled_state(hostile)
    assert not marker.exists()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(plain.read_bytes()[:40])
    with pytest.raises(TrainingStateError, match="is unreadable"):
        load_pickled_state(truncated)
