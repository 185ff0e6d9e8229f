"""Retrieval with the contrastive pass, as users run it: `prismer retrieve` both ways, the stored
image embeddings, `prismer eval --task retrieval`, zero-shot classification, and the Python API,
on a small model trained here with both passes."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from prismer_core.errors import PrismerError
from prismer_core.inference import ImageEmbeddingStore, Predictor
from prismer_core.inference.embeddings import model_identity, nearest
from prismer_core.inference.retrieval import chance_recall, recall_metrics
from prismer_core.model import Prismer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def predictor(retrieval_model):
    return Predictor.from_checkpoint(retrieval_model.run)


def train_pairs(model):
    """(image path, its caption) of the training split, one per image."""
    rows = [json.loads(line) for line in (model.demo / "train.jsonl").read_text().splitlines()]
    return [(model.demo / r["image"], r["caption"]) for r in rows if "caption" in r]


def test_a_caption_finds_its_own_image_far_more_often_than_chance(retrieval_model, predictor):
    pairs = train_pairs(retrieval_model)
    images, captions = [p for p, _ in pairs], [c for _, c in pairs]
    results = predictor.retrieve(captions, images, k=5)
    top1 = sum(matches[0].index == i for i, matches in enumerate(results)) / len(pairs)
    top5 = sum(i in [m.index for m in matches] for i, matches in enumerate(results)) / len(pairs)
    assert len(results) == len(pairs) and all(len(m) == 5 for m in results)
    assert results[0][0].name == images[results[0][0].index].name
    assert all(a.score >= b.score for matches in results for a, b in zip(matches, matches[1:]))
    chance = 1 / len(pairs)
    assert top1 > 4 * chance and top5 > 4 * 5 * chance, (top1, top5, chance)
    # and the other way: an image ranks the captions, its own among the first
    back = predictor.retrieve(captions, images, query="images", k=5)
    assert sum(i in [m.index for m in matches] for i, matches in enumerate(back)) / len(pairs) > 4 * 5 * chance
    assert back[0][0].name == captions[back[0][0].index]


def test_embeddings_are_unit_vectors_and_classification_by_similarity_is_their_cosine(retrieval_model, predictor):
    images = [p for p, _ in train_pairs(retrieval_model)[:3]]
    vectors = predictor.embed_images(images)
    texts = predictor.embed_texts(["A photo of a circle.", "A photo of a star."])
    assert vectors.shape == (3, 64) and texts.shape == (2, 64)
    assert torch.allclose(vectors.norm(dim=1), torch.ones(3), atol=1e-5)
    rankings = predictor.classify(images, ["circle", "star"], by="similarity")
    for ranking, vector in zip(rankings, vectors):
        cosines = dict(zip(["circle", "star"], (texts @ vector).tolist()))
        assert ranking.answer == max(cosines, key=cosines.get)
        assert ranking.scores == pytest.approx(sorted(cosines.values(), reverse=True), abs=1e-5)
    with pytest.raises(PrismerError, match="classify by 'vibes'"):
        predictor.classify(images, ["circle"], by="vibes")


def test_the_store_keeps_embeddings_by_content_so_a_second_query_embeds_no_image(retrieval_model, predictor, tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    pairs = train_pairs(retrieval_model)[:6]
    for path, _ in pairs:
        shutil.copy(path, folder / path.name)
    store = predictor.embedding_store(tmp_path / "store")
    first = predictor.embed_images(sorted(folder.iterdir()), store=store)
    assert store.path.is_file() and store.path.suffix == ".safetensors" and len(store) == 6

    def no_image_work(*args, **kwargs):
        raise AssertionError("an image was embedded again")

    monkeypatch.setattr(Prismer, "embed_images", no_image_work)
    (folder / pairs[0][0].name).rename(folder / "renamed.png")  # found by its bytes, not its name
    reopened = predictor.embedding_store(tmp_path / "store")
    again = predictor.embed_images(sorted(folder.iterdir()), store=reopened)
    order = sorted(p.name for p in folder.iterdir())
    assert torch.equal(again[order.index("renamed.png")], first[sorted(p.name for p, _ in pairs).index(pairs[0][0].name)])
    monkeypatch.undo()
    # another precision is another model identity: a file of its own
    assert predictor.embedding_store(tmp_path / "store").identity == store.identity
    assert model_identity("w", {}, {}, "fp32") != model_identity("w", {}, {}, "bf16")
    assert model_identity("w", {}, {"edge": {"low": 50}}, "fp32") != model_identity("w", {}, {"edge": {"low": 60}}, "fp32")


def test_a_damaged_store_is_named_and_not_used(predictor, tmp_path, retrieval_model):
    store = predictor.embedding_store(tmp_path)
    store.path.write_bytes(b"not safetensors")
    with pytest.raises(PrismerError, match=r"image embedding store .* is damaged .*delete it to rebuild it"):
        predictor.embed_images([train_pairs(retrieval_model)[0][0]], store=store)


def test_cli_retrieve_images_for_a_text_and_texts_for_an_image(cli, retrieval_model, tmp_path):
    pairs = train_pairs(retrieval_model)
    folder = tmp_path / "images"
    folder.mkdir()
    for path, _ in pairs:
        shutil.copy(path, folder / path.name)
    store = tmp_path / "store"
    result = cli("retrieve", "--checkpoint", retrieval_model.run, "--images", folder, "--store", store, "--top", "3",
                 pairs[0][1])
    lines = result.stdout.splitlines()
    assert lines[0] == pairs[0][1] and len(lines) == 4
    ranked = [line.split() for line in lines[1:]]
    assert [int(r[0]) for r in ranked] == [1, 2, 3] and all(r[2].endswith(".png") for r in ranked)
    assert float(ranked[0][1]) >= float(ranked[1][1]) >= float(ranked[2][1])
    assert f"({len(pairs)} stored)" in result.stderr and list(store.glob("*.safetensors"))

    as_json = json.loads(cli("retrieve", "--checkpoint", retrieval_model.run, "--images", folder, "--store", store,
                             "--json", pairs[1][1], pairs[2][1]).stdout)
    assert [q["query"] for q in as_json] == [pairs[1][1], pairs[2][1]] and len(as_json[0]["matches"]) == 5

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(c for _, c in pairs[:8]) + "\n")
    back = cli("retrieve", "--checkpoint", retrieval_model.run, "--image", pairs[0][0], "--texts", texts, "--no-store")
    lines = back.stdout.splitlines()
    assert lines[0] == str(pairs[0][0]) and len(lines) == 6
    assert all(line.split(None, 2)[2] in {c for _, c in pairs[:8]} for line in lines[1:])


def test_cli_retrieve_errors_are_one_line(cli, retrieval_model, trained, tmp_path):
    run = retrieval_model.run
    for args, message in [
        ((), "give either TEXT... with --images"),
        (("--images", tmp_path), "--images needs at least one TEXT"),
        (("--image", retrieval_model.test_images()[0]), "--image needs --texts FILE"),
        (("--images", tmp_path / "missing", "a text"), "missing"),
    ]:
        failed = cli("retrieve", "--checkpoint", run, *args, check=False)
        assert failed.exit_code == 1 and message in failed.output, failed.output
        assert len(failed.output.strip().splitlines()) == 1
    # a checkpoint trained without the contrastive pass says so, before embedding anything
    failed = cli("retrieve", "--checkpoint", trained.run, "--images", retrieval_model.demo / "test.jsonl", "a text", check=False)
    assert failed.exit_code == 1 and "no contrastive pass" in failed.output


def test_eval_retrieval_reports_recalls_recomputable_from_its_ranks(cli, retrieval_model, tmp_path):
    report_path = tmp_path / "retrieval.json"
    result = cli("eval", "--checkpoint", retrieval_model.run, "--data", retrieval_model.demo / "train.jsonl",
                 "--task", "retrieval", "--report", report_path)
    report = json.loads(report_path.read_text())
    images = {r["image"] for r in (json.loads(line) for line in (retrieval_model.demo / "train.jsonl").read_text().splitlines())}
    t2i = [p for p in report["predictions"] if p["direction"] == "text→image"]
    i2t = [p for p in report["predictions"] if p["direction"] == "image→text"]
    assert len(t2i) == len(i2t) == len(images) == report["settings"]["images"]
    assert report["metrics"] == recall_metrics(report["predictions"])
    assert set(report["metrics"]) == {f"{d} recall@{k}" for d in ("text→image", "image→text") for k in (1, 5, 10)}
    assert report["metrics"]["text→image recall@10"] >= report["metrics"]["text→image recall@5"] >= report["metrics"]["text→image recall@1"]
    assert report["settings"]["chance"]["text→image recall@1"] == round(1 / len(images), 4)
    assert all(p["top"][0] == p["image"] for p in t2i if p["rank"] == 1)
    assert "text→image recall@1" in result.stdout and "queries" in result.stdout


def test_chance_and_nearest_by_hand():
    predictions = [{"direction": "text→image", "image": "a", "rank": 1}, {"direction": "text→image", "image": "a", "rank": 3},
                   {"direction": "text→image", "image": "b", "rank": 2}, {"direction": "image→text", "image": "a", "rank": 1},
                   {"direction": "image→text", "image": "b", "rank": 2}]
    metrics = recall_metrics(predictions)
    assert metrics["text→image recall@1"] == pytest.approx(1 / 3) and metrics["image→text recall@1"] == 0.5
    chance = chance_recall(predictions, 1)
    # image a owns 2 of the 3 captions, b one: (2/3 + 1/3) / 2
    assert chance["text→image recall@1"] == 0.5 and chance["image→text recall@1"] == pytest.approx(0.5)
    scores, indices = nearest(torch.eye(3)[[2, 0]], torch.eye(3), k=2)
    assert indices[:, 0].tolist() == [2, 0] and scores[:, 0].tolist() == [1.0, 1.0]
    store = ImageEmbeddingStore("/nonexistent", "x" * 64)
    assert len(store) == 0 and store.get(["ab"]) == {}


def test_the_demo_table_gains_a_retrieval_row_against_chance(retrieval_model, tmp_path):
    from rich.console import Console

    from prismer_core.demo import evaluate_demo

    console = Console(record=True, width=400)
    table = evaluate_demo({"rgb": retrieval_model.run}, retrieval_model.test, tmp_path / "eval", console=console,
                          show_progress=False)
    printed = console.export_text()
    section = printed.split("retrieval on the test split")[1].split("reports in")[0]
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]] for line in section.splitlines()
            if line.count("│") > 2 and not line.split("│")[1].strip() in ("run", "")}
    assert set(rows) == {"rgb", "chance"}
    report = json.loads((tmp_path / "eval" / "rgb-retrieval.json").read_text())
    assert [float(c) for c in rows["rgb"][:4]] == [round(report["metrics"][k], 4) for k in
                                                   ("text→image recall@1", "text→image recall@5", "image→text recall@1", "image→text recall@5")]
    images = len({p["image"] for p in report["predictions"]})
    assert float(rows["chance"][0]) == round(1 / images, 4)
    worded = [p for p in report["predictions"] if p["direction"] == "text→image" and " with the word " in p["caption"]]
    if worded:  # the captions that name a printed word, scored apart
        assert table["rgb"]["retrieval text→image recall@1 (word)"] == sum(p["rank"] == 1 for p in worded) / len(worded)
    assert table["rgb"]["retrieval text→image recall@5"] == report["metrics"]["text→image recall@5"]
    assert sum("--task retrieval" in line for line in printed.splitlines()) == 1
