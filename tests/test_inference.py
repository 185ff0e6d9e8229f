"""Captions, answers, ranking and classification from a model trained here on the demo data,
through the Python API and `prismer caption` / `prismer vqa`, as users run them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from inference_helpers import CAPTION_PROMPT
from model_helpers import experts, small_spec
from prismer_core.checkpoint import save_checkpoint
from prismer_core.text import task_prompt
from prismer_core.errors import PrismerError
from prismer_core.experts.contract import ExpertKind, ExpertSpec
from prismer_core.inference import Predictor
from prismer_core.model import build_model
from prismer_core.registry import get_registry

ANSWERS = ["one", "two", "three", "four", "red", "blue", "circle", "left"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def predictor(trained):
    return Predictor.from_checkpoint(trained.run)  # a run folder: its latest checkpoint


def direct_log_likelihoods(predictor: Predictor, image, prompt: str, texts: list[str]) -> list[float]:
    """log p(text + end | image, prompt) from the model's plain forward pass, token by token."""
    model, tokenizer = predictor.model, predictor.codec.tokenizer
    batch = predictor.inputs([image])
    head = tokenizer(prompt)["input_ids"][:-1]  # [CLS] prompt, without [SEP]
    scores = []
    for text in texts:
        body = tokenizer(" " + text, add_special_tokens=False)["input_ids"] + [tokenizer.sep_token_id]
        with torch.no_grad():
            log_probs = F.log_softmax(model(batch, torch.tensor([head + body])).logits[0], dim=-1)
        scores.append(sum(float(log_probs[len(head) - 1 + i, token]) for i, token in enumerate(body)))
    return scores


def test_captions_are_sentences_of_the_vocabulary_for_paths_pil_images_and_arrays(trained, predictor):
    images = trained.test_images()[:3]
    captions = predictor.caption(images, batch_size=2)
    assert predictor.caption_prompt == CAPTION_PROMPT  # the prompt the run was trained with
    assert len(captions) == 3 and all(isinstance(c, str) and c.strip() for c in captions)
    vocabulary = set(predictor.codec.tokenizer.get_vocab())
    for caption in captions:
        tokens = predictor.codec.tokenizer.tokenize(caption)
        assert tokens and "[UNK]" not in tokens and set(tokens) <= vocabulary
    assert {"shape", "shapes"} & set(" ".join(captions).split())  # it learnt the demo's captions
    pil = Image.open(images[0])
    assert predictor.caption([pil, np.asarray(pil.convert("RGB"))]) == [captions[0]] * 2
    greedy = predictor.caption(images[:1], num_beams=1, max_new_tokens=4)
    assert len(predictor.codec.tokenizer.tokenize(greedy[0])) <= 4


def test_open_ended_answers(trained, predictor):
    rows = [r for r in trained.test_rows() if "question" in r][:4]
    answers = predictor.answer([trained.demo / r["image"] for r in rows], [r["question"] for r in rows])
    assert len(answers) == 4 and all(a.strip() for a in answers)
    with pytest.raises(PrismerError, match="got 1 questions for 2 images"):
        predictor.answer(trained.test_images()[:2], ["how many?"])


def test_ranking_returns_the_most_likely_candidate_by_direct_computation(trained, predictor):
    rows = [r for r in trained.test_rows() if "question" in r][:3]
    images = [trained.demo / r["image"] for r in rows]
    rankings = predictor.rank(images, [r["question"] for r in rows], ANSWERS, batch_size=2)
    for image, row, ranking in zip(images, rows, rankings):
        direct = direct_log_likelihoods(predictor, image, task_prompt("vqa", row["question"]), ANSWERS)
        assert ranking.answer == ANSWERS[int(np.argmax(direct))]
        assert sorted(ranking.candidates) == sorted(ANSWERS)
        got = dict(zip(ranking.candidates, ranking.scores))
        assert [got[a] for a in ANSWERS] == pytest.approx(direct, abs=1e-3)
        assert list(ranking.scores) == sorted(ranking.scores, reverse=True)


def test_bfloat16_inference_scores_close_to_fp32_and_still_writes_sentences(trained, predictor):
    half = Predictor.from_checkpoint(trained.run, precision="bf16")
    assert half.dtype == torch.bfloat16
    rows = [r for r in trained.test_rows() if "question" in r][:3]
    images = [trained.demo / r["image"] for r in rows]
    questions = [r["question"] for r in rows]
    for full, low in zip(predictor.rank(images, questions, ANSWERS), half.rank(images, questions, ANSWERS)):
        full_scores, low_scores = dict(zip(full.candidates, full.scores)), dict(zip(low.candidates, low.scores))
        # bf16 keeps 8 bits of mantissa: summed log-likelihoods agree to a few hundredths per token
        assert [low_scores[a] for a in ANSWERS] == pytest.approx([full_scores[a] for a in ANSWERS], abs=0.5)
    captions = half.caption(images)
    assert len(captions) == 3 and all(c.strip() for c in captions)
    with pytest.raises(PrismerError, match="precision 'fp16'"):
        Predictor.from_checkpoint(trained.run, precision="fp16")


def test_prefilter_covering_all_candidates_equals_full_ranking(trained, predictor):
    rows = [r for r in trained.test_rows() if "question" in r][:3]
    images, questions = [trained.demo / r["image"] for r in rows], [r["question"] for r in rows]
    full = predictor.rank(images, questions, ANSWERS)
    filtered = predictor.rank(images, questions, ANSWERS, prefilter_k=len(ANSWERS))
    for a, b in zip(full, filtered):
        assert a.answer == b.answer and a.candidates == b.candidates
        assert a.scores == pytest.approx(b.scores, abs=1e-4)


def test_prefilter_keeps_the_candidates_whose_first_token_is_most_likely(trained, predictor):
    row = next(r for r in trained.test_rows() if "question" in r)
    image, prompt = trained.demo / row["image"], task_prompt("vqa", row["question"])
    model, tokenizer = predictor.model, predictor.codec.tokenizer
    with torch.no_grad():
        head = torch.tensor([tokenizer(prompt)["input_ids"][:-1]])
        first = F.log_softmax(model(predictor.inputs([image]), head).logits[0, -1], dim=-1)
    first_token = {a: first[tokenizer(" " + a, add_special_tokens=False)["input_ids"][0]].item() for a in ANSWERS}
    expected = sorted(ANSWERS, key=first_token.get, reverse=True)[:3]
    ranking = predictor.rank([image], [row["question"]], ANSWERS, prefilter_k=3)[0]
    assert sorted(ranking.candidates) == sorted(expected)
    direct = direct_log_likelihoods(predictor, image, prompt, expected)
    assert ranking.answer == expected[int(np.argmax(direct))]


def test_classification_ranks_the_template_sentences(trained, predictor):
    image = trained.test_images()[0]
    classes = ["circle", "square", "star"]
    result = predictor.classify([image], classes)[0]
    direct = direct_log_likelihoods(predictor, image, CAPTION_PROMPT, [f"A photo of a {c}." for c in classes])
    assert result.answer == classes[int(np.argmax(direct))]
    assert sorted(result.candidates) == sorted(classes)
    with pytest.raises(PrismerError, match="one '{}'"):
        predictor.classify([image], classes, template="A photo.")
    with pytest.raises(PrismerError, match="repeated: 'star'"):
        predictor.classify([image], ["star", "star "])


def test_cli_caption_and_vqa(cli, trained, tmp_path):
    images = trained.test_images()[:2]
    out = tmp_path / "captions.jsonl"
    result = cli("caption", "--checkpoint", trained.run, *images, "--out", out)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["image"] for line in lines] == [str(i) for i in images]
    for line in lines:
        assert f"{line['image']}: {line['caption']}" in result.stdout and line["caption"]
    half = cli("caption", "--checkpoint", trained.run, images[0], "--precision", "bf16")
    assert half.stdout.startswith(f"{images[0]}: ") and half.stdout.split(": ", 1)[1].strip()
    failed = cli("caption", "--checkpoint", trained.run, images[0], tmp_path / "missing.png", "--out", tmp_path / "no.jsonl", check=False)
    assert failed.exit_code == 1 and f"Error: image not found: {tmp_path / 'missing.png'}" in failed.output
    assert not (tmp_path / "no.jsonl").exists()

    row = next(r for r in trained.test_rows() if "question" in r)
    image = trained.demo / row["image"]
    answer = cli("vqa", "--checkpoint", trained.checkpoint, image, row["question"]).stdout.strip()
    assert answer == Predictor.from_checkpoint(trained.checkpoint).answer([image], [row["question"]])[0]

    candidates = tmp_path / "answers.txt"
    candidates.write_text("\n".join(ANSWERS) + "\n")
    ranked = cli("vqa", "--checkpoint", trained.checkpoint, image, row["question"], "--answers", candidates, "--top", "3")
    best = ranked.stdout.splitlines()[0]
    assert best in ANSWERS
    assert best == Predictor.from_checkpoint(trained.checkpoint).rank([image], [row["question"]], ANSWERS)[0].answer


def test_expert_maps_from_a_label_store_give_the_same_captions(cli, trained, tmp_path, monkeypatch):
    monkeypatch.chdir(trained.demo)  # paths relative to here, as typed in a shell
    folder = Path("images") / "test"
    store = tmp_path / "store"
    cli("label", folder, "--experts", "edge", "--out", store)
    images = sorted(folder.glob("*.png"))[:2]
    live = Predictor.from_checkpoint(trained.run).caption(images)
    stored = Predictor.from_checkpoint(trained.run, labels=store)
    assert stored.caption(images) == live
    # found by content, however the file is reached: another folder, another name
    elsewhere = tmp_path / "elsewhere" / "renamed.png"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(images[0].read_bytes())
    assert stored.caption([elsewhere.resolve()]) == live[:1]
    with pytest.raises(PrismerError, match="has no name in a label store"):
        stored.caption([np.asarray(Image.open(images[0]).convert("RGB"))])
    other = tmp_path / "other.png"
    Image.new("RGB", (64, 64), "white").save(other)
    with pytest.raises(PrismerError, match=f"has no 'edge' labels for image {other}"):
        stored.caption([other])


def test_a_missing_or_unready_expert_is_named_with_what_to_do(cli, trained, tmp_path):
    image = trained.test_images()[0]
    torch.manual_seed(0)
    unready = save_checkpoint(build_model(small_spec(), experts("depth")), tmp_path / "depth-model")
    result = cli("caption", "--checkpoint", unready, image, check=False)
    assert result.exit_code == 1
    message = result.output.strip()
    assert message.startswith("Error: checkpoint") and "\n" not in message
    assert "trained with the experts depth 1.0" in message and "'depth'" in message and "not ready" in message
    assert "PRISMER_DEPTH_MODEL" in message  # the registry's advice on how to get it

    sketch = ExpertSpec("sketch", "2.0", ExpertKind.DENSE, channels=1)
    missing = save_checkpoint(build_model(small_spec(), {"sketch": sketch}), tmp_path / "sketch-model")
    with pytest.raises(PrismerError, match=r"'sketch' is not installed: install the plugin package that provides it"):
        Predictor.from_checkpoint(missing)

    ocr = {"ocr": get_registry().entry("ocr").spec}  # the installed expert, so only the encoder is missing
    no_encoder = save_checkpoint(build_model(small_spec(), ocr), tmp_path / "ocr-model")
    with pytest.raises(PrismerError, match=r"uses semantic experts \(ocr\) but holds no label encoder file"):
        Predictor.from_checkpoint(no_encoder)


def test_semantic_maps_are_encoded_with_the_checkpoints_own_label_encoder(tmp_path, monkeypatch):
    """A random projection saved into the checkpoint is the one used; nothing is fitted anew."""
    from PIL import ImageDraw, ImageFont

    from prismer_core.runner import ExpertRunner
    from prismer_core.registry import get_registry
    from prismer_core.semantic import LabelEncoder, Projection, create_embedder

    monkeypatch.setenv("PRISMER_HOME", str(tmp_path / "home"))
    embedder = create_embedder("minilm")
    words = [f"word{i}" for i in range(80)]
    projection = Projection.fit(np.random.default_rng(0).normal(size=(80, 384)), np.ones(384), words, embedder="minilm",
                                embedder_identity=embedder.identity, embedder_settings=embedder.settings_to_save())
    encoder_file = LabelEncoder(projection).save(tmp_path / "labels.safetensors")
    ocr = {"ocr": get_registry().entry("ocr").spec}
    torch.manual_seed(0)
    checkpoint = save_checkpoint(build_model(small_spec(), ocr), tmp_path / "ocr-model",
                                 label_encoder=projection.identity, label_encoder_file=encoder_file)

    picture = Image.new("RGB", (192, 192), "white")
    ImageDraw.Draw(picture).text((96, 96), "PRISMER", fill="black", font=ImageFont.load_default(size=40), anchor="mm")
    image = np.asarray(picture)
    predictor = Predictor.from_checkpoint(checkpoint)
    assert predictor.encoder.label_encoder.identity == projection.identity
    inputs = predictor.inputs([image])  # label ids and their table: the map is table[ids]
    ocr_map = inputs.label_tables["ocr"][0][inputs.experts["ocr"][0].long()].reshape(-1, 64).numpy()
    names = ExpertRunner(["ocr"])([image], ["picture"])["ocr"][0].names
    assert names  # the word was read
    allowed = np.concatenate([projection.background[None], LabelEncoder(projection, embedder).vectors(names)])
    seen = np.unique(ocr_map, axis=0)
    assert len(seen) >= 2  # background and the word
    assert all(np.abs(allowed - row).max(axis=1).min() < 1e-6 for row in seen)
    assert not (tmp_path / "home" / "projections").exists()  # no projection was fitted


def test_the_prompt_inference_sends_is_the_prompt_training_taught(trained, predictor, monkeypatch):
    """Token for token: the rows `Predictor.answer` and `caption` hand the model begin with
    exactly the ids training's collator fed for the same sample, up to its first learnt token."""
    from prismer_core.data.dataset import Collator, TrainingData
    from prismer_core.data.manifest import load_data
    from prismer_core.text import IGNORE_INDEX

    samples = {s.task: s for s in load_data(trained.test, ("caption", "vqa")).samples}
    data = TrainingData(list(samples.values()), predictor.encoder, predictor.labels, predictor.caption_prompt)
    batch = Collator(predictor.codec)([data[(i, 0)] for i in range(len(samples))])
    sent = []
    monkeypatch.setattr(predictor.model, "generate", lambda inputs, prompt, **kw: sent.append(prompt) or [[]] * len(inputs))
    predictor.caption([samples["caption"]])
    predictor.answer([samples["vqa"]], [samples["vqa"].question])
    for task, prompt in zip(("caption", "vqa"), sent, strict=True):
        row = batch.tasks.index(task)  # the collator sorts rows by length
        first_learnt = (batch.labels[row] != IGNORE_INDEX).nonzero()[0, 0].item()
        assert prompt.ids[0][prompt.valid[0]].tolist() == batch.input_ids[row, :first_learnt].tolist()
