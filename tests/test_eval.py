"""`prismer eval` and the demo's evaluation table: reports hold every prediction, and the
numbers printed are the metrics recomputed from those predictions."""

from __future__ import annotations

import json
import re
import shlex

import pytest
from rich.console import Console

from prismer_core.demo import evaluate_demo
from prismer_core.metrics import caption_scores, mean_vqa_accuracy, top1_accuracy

pytestmark = pytest.mark.usefixtures("one_thread")


def table_row(output: str, name: str) -> list[float]:
    """The numbers of the table row that starts with ``name``."""
    line = next(line for line in output.splitlines() if line.strip("│┃ ").startswith(name))
    return [float(cell) for cell in re.findall(r"-?\d+\.\d{4}", line)]


def printed_metrics(output: str) -> dict[str, float]:
    """``{metric: value}`` from the metric/value table `prismer eval` prints."""
    found = re.findall(r"│ ([A-Za-z0-9 ()-]+?) +│ +(-?\d+\.\d{4}) │", output)
    return {metric: float(value) for metric, value in found}


def test_vqa_report_and_table_agree_with_the_metric_recomputed(cli, trained, tmp_path):
    report_path = tmp_path / "vqa.json"
    result = cli("eval", "--checkpoint", trained.run, "--data", trained.test, "--task", "vqa", "--report", report_path)
    report = json.loads(report_path.read_text())
    rows = [r for r in trained.test_rows() if "question" in r]
    assert report["task"] == "vqa" and report["settings"]["mode"] == "open-ended"
    assert report["count"] == len(rows) == len(report["predictions"])
    assert [(p["question"], p["answers"]) for p in report["predictions"]] == [(r["question"], [r["answer"]]) for r in rows]
    assert [p["type"] for p in report["predictions"]] == [r["type"] for r in rows]

    def accuracy(predictions):
        return mean_vqa_accuracy([p["prediction"] for p in predictions], [p["answers"] for p in predictions])

    expected = {"VQA accuracy": accuracy(report["predictions"])}
    kinds = sorted({r["type"] for r in rows})
    assert len(kinds) >= 3  # the demo asks of counts, colours, shapes, positions and words
    for kind in kinds:
        expected[f"VQA accuracy ({kind})"] = accuracy([p for p in report["predictions"] if p["type"] == kind])
    assert report["metrics"] == expected
    assert printed_metrics(result.stdout) == {metric: round(value, 4) for metric, value in expected.items()}
    assert f"report: {report_path}" in result.stdout


def test_caption_report_and_table_agree_with_cider_and_bleu_recomputed(cli, trained, tmp_path):
    report_path = tmp_path / "captions.json"
    result = cli("eval", "--checkpoint", trained.checkpoint, "--data", trained.test, "--task", "caption",
                 "--report", report_path, "--limit", "3")
    report = json.loads(report_path.read_text())
    predictions = report["predictions"]
    assert len(predictions) == 3 and all(p["prediction"] for p in predictions)
    captions = {}
    for row in trained.test_rows():
        if "caption" in row:
            captions.setdefault(row["image"], []).append(row["caption"])
    assert {p["image"]: p["references"] for p in predictions} == {k: captions[k] for k in list(captions)[:3]}
    scores = caption_scores({p["image"]: p["prediction"] for p in predictions}, {p["image"]: p["references"] for p in predictions})
    assert report["metrics"] == scores
    assert printed_metrics(result.stdout) == {k: round(v, 4) for k, v in scores.items()}
    assert set(scores) == {"CIDEr", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"}


def test_vqa_by_ranking_a_candidate_list(cli, trained, tmp_path):
    train_rows = [json.loads(line) for line in (trained.demo / "train.jsonl").read_text().splitlines()]
    answers = sorted({r["answer"] for r in train_rows if "answer" in r})
    candidates = tmp_path / "answers.json"
    candidates.write_text(json.dumps(answers))
    report_path = tmp_path / "ranked.json"
    cli("eval", "--checkpoint", trained.run, "--data", trained.test, "--task", "vqa", "--answers", candidates,
        "--prefilter-k", "5", "--limit", "6", "--report", report_path)
    report = json.loads(report_path.read_text())
    assert report["settings"] == {"batch_size": 8, "precision": "float32", "mode": "ranking", "candidates": len(answers), "prefilter_k": 5}
    assert len(report["predictions"]) == 6 and all(p["prediction"] in answers for p in report["predictions"])
    assert report["metrics"]["VQA accuracy"] == mean_vqa_accuracy(
        [p["prediction"] for p in report["predictions"]], [p["answers"] for p in report["predictions"]])


def test_classification_by_ranking(cli, trained, tmp_path):
    manifest = tmp_path / "shapes.jsonl"
    count = {r["image"]: r["answer"] for r in trained.test_rows() if r.get("type") == "count"}
    manifest.write_text("".join(json.dumps({"image": str(trained.demo / image), "label": label}) + "\n" for image, label in count.items()))
    report_path = tmp_path / "classify.json"
    result = cli("eval", "--checkpoint", trained.run, "--data", manifest, "--task", "classify",
                 "--template", "{} shapes", "--report", report_path)
    report = json.loads(report_path.read_text())
    assert [p["label"] for p in report["predictions"]] == list(count.values())
    assert all(p["prediction"] in set(count.values()) for p in report["predictions"])
    accuracy = top1_accuracy([p["prediction"] for p in report["predictions"]], [p["label"] for p in report["predictions"]])
    assert report["metrics"] == {"top-1 accuracy": accuracy}
    assert printed_metrics(result.stdout) == {"top-1 accuracy": round(accuracy, 4)}

    manifest.write_text(json.dumps({"image": "nowhere.png", "label": "two"}) + "\n")
    failed = cli("eval", "--checkpoint", trained.run, "--data", manifest, "--task", "classify", check=False)
    assert failed.exit_code == 1 and f"{manifest}:1: image not found" in failed.output


def test_bad_eval_requests_are_one_line_errors(cli, trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the default report would go
    failed = cli("eval", "--checkpoint", trained.run, "--data", trained.test, "--task", "translate", check=False)
    assert failed.exit_code == 1 and "Error: --task must be one of caption, vqa, classify" in failed.output
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    failed = cli("eval", "--checkpoint", trained.run, "--data", trained.test, "--task", "vqa", "--answers", empty, check=False)
    assert failed.exit_code == 1 and "lists nothing" in failed.output
    failed = cli("eval", "--checkpoint", tmp_path, "--data", trained.test, "--task", "vqa", check=False)
    assert failed.exit_code == 1 and "is not a Prismer checkpoint" in failed.output
    assert not list(tmp_path.glob("eval-*.json"))


def test_the_demo_table_is_reproduced_by_the_printed_commands(cli, trained, tmp_path):
    console = Console(record=True, width=400)
    table = evaluate_demo({"edge": trained.run}, trained.test, tmp_path / "eval", console=console, show_progress=False)
    printed = console.export_text()
    assert table_row(printed, "edge") == [round(table["edge"][k], 4) for k in ("VQA accuracy", "CIDEr", "BLEU-4")]
    kinds = sorted({r["type"] for r in trained.test_rows() if "type" in r})
    by_type = printed.split("VQA accuracy by question type:")[1]
    assert table_row(by_type, "edge") == [round(table["edge"][f"VQA accuracy ({kind})"], 4) for kind in kinds]
    commands = [line.strip() for line in printed.splitlines() if line.strip().startswith("prismer eval")]
    assert len(commands) == 2
    for command in commands:
        args = shlex.split(command)[1:]
        report_path = tmp_path / "again.json"
        args[args.index("--report") + 1] = str(report_path)
        again = json.loads(cli(*args).stdout and report_path.read_text())
        for metric, value in again["metrics"].items():
            if metric in table["edge"]:
                assert value == table["edge"][metric]
