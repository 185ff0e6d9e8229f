"""Metrics against hand-worked examples and against pycocoevalcap's scorers called directly."""

import pytest

from prismer_core.metrics import caption_scores, mean_vqa_accuracy, normalize_answer, top1_accuracy, vqa_accuracy


@pytest.mark.parametrize(
    "raw, normalised",
    [
        ("Two", "2"),
        ("the red circle.", "red circle"),
        ("A dog!", "dog"),
        ("dont know", "don't know"),
        ("1,000", "1000"),
        ("yes, it is", "yes it is"),
        ("3.5", "3.5"),
    ],
)
def test_vqa_normalisation(raw, normalised):
    assert normalize_answer(raw) == normalised


def test_vqa_accuracy_hand_worked():
    # 10 human answers, 3 say "2": leaving out one of the three leaves 2 matches (2/3),
    # leaving out one of the others leaves 3 (capped at 1): (3 * 2/3 + 7 * 1) / 10 = 0.9
    humans = ["2"] * 3 + ["3"] * 7
    assert vqa_accuracy("two", humans) == pytest.approx(0.9)
    # 1 match of 10: left out itself -> 0, otherwise 1/3: 9 * (1/3) / 10 = 0.3
    assert vqa_accuracy("4", ["4"] + ["5"] * 9) == pytest.approx(0.3)
    assert vqa_accuracy("blue", ["red"] * 10) == 0.0
    assert vqa_accuracy("Blue.", ["blue"] * 10) == 1.0
    assert vqa_accuracy("the cat", ["cat"]) == 1.0  # single reference: exact match after normalising
    assert mean_vqa_accuracy(["cat", "dog"], [["cat"], ["cow"]]) == 0.5
    with pytest.raises(ValueError):
        vqa_accuracy("x", [])


def test_caption_scores_equal_the_scorers_called_directly():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    predictions = {"a": "A red circle on the left.", "b": "two blue squares", "c": "a green triangle"}
    references = {
        "a": ["a red circle on the left", "a red circle left of a square"],
        "b": ["two blue squares", "blue squares , two of them"],
        "c": ["a yellow star", "one green triangle in the middle"],
    }
    scores = caption_scores(predictions, references)
    gts = {
        "a": ["a red circle on the left", "a red circle left of a square"],
        "b": ["two blue squares", "blue squares two of them"],
        "c": ["a yellow star", "one green triangle in the middle"],
    }
    res = {"a": ["a red circle on the left"], "b": ["two blue squares"], "c": ["a green triangle"]}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    assert scores["CIDEr"] == pytest.approx(cider)
    assert scores["BLEU-4"] == pytest.approx(bleu[3])
    assert scores["BLEU-1"] == pytest.approx(bleu[0])
    assert 0 < scores["BLEU-4"] < 1 and scores["CIDEr"] > 0


def test_top1():
    assert top1_accuracy(["cat", "dog", "cow"], ["cat", "dog", "pig"]) == pytest.approx(2 / 3)
