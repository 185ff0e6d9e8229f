"""`prismer demo` end to end on a handful of scenes: data, edge+ocr labels, two trainings,
the evaluation table, and a printed `prismer eval` command that gives the same numbers."""

from __future__ import annotations

import json
import shlex


def test_demo_runs_every_stage_and_its_eval_commands_reproduce_the_table(cli, tmp_path):
    out = tmp_path / "demo"
    result = cli("demo", "--out", out, "--n", "6", "--steps", "2", "--contrastive")  # both passes: every report

    assert sorted(p.name for p in (out / "data").glob("*.jsonl")) == ["test.jsonl", "train.jsonl", "val.jsonl"]
    store = json.loads((out / "labels" / "store.json").read_text())
    assert sorted(store["experts"]) == ["edge", "ocr"]
    assert len(list((out / "labels" / "ocr").rglob("*.npz"))) == 6  # every split labelled
    for name, experts in (("experts", ["edge", "ocr"]), ("rgb", [])):
        run = out / "runs" / name
        assert sorted(json.loads((run / "run.json").read_text())["experts"]) == experts
        assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 2
        assert (run / "loss.png").exists()
        assert f"{name}: checkpoint {run / 'checkpoints' / 'step-000002'}" in result.stderr
    assert "train loss" in result.stderr and "images/s" in result.stderr  # what training measured
    assert "edge+ocr: caption: " in result.stderr and "PrismerZ: caption: " in result.stderr  # what they wrote

    # the evaluation table: one report per run and task, each with its `prismer eval` line
    reports = {p.name: json.loads(p.read_text()) for p in (out / "eval").glob("*.json")}
    assert sorted(reports) == [f"{run}-{task}.json" for run in ("PrismerZ", "edge-ocr") for task in ("caption", "retrieval", "vqa")]
    assert "VQA accuracy" in result.stderr and "CIDEr" in result.stderr
    for report in reports.values():
        assert report["count"] >= 1 and len(report["predictions"]) == report["count"]
        assert all(0 <= value for value in report["metrics"].values())
    commands = [shlex.split(line.strip()) for line in result.stderr.splitlines() if line.strip().startswith("prismer eval")]
    assert len(commands) == len(reports)  # one per report, retrieval's too (the runs train both passes)

    # issue 5's acceptance: a printed command, run again, reproduces its row of the table
    command = next(c for c in commands if c[c.index("--task") + 1] == "vqa" and "experts" in c[c.index("--checkpoint") + 1])
    report_path = command[command.index("--report") + 1]
    before = json.loads(open(report_path).read())
    command[command.index("--report") + 1] = str(tmp_path / "again.json")
    cli(*command[1:])
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["metrics"] == before["metrics"]
    assert [p["prediction"] for p in again["predictions"]] == [p["prediction"] for p in before["predictions"]]
