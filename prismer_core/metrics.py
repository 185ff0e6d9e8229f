"""Evaluation metrics: VQA accuracy (standard normalisation), captioning CIDEr/BLEU, top-1.

Caption scores come from pycocoevalcap's own scorers. Its PTB tokenizer needs Java, so we
tokenise in Python the way the COCO toolkit does for plain English (lower case, punctuation
dropped); on such text the two agree.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

# The VQA challenge's answer normalisation (Antol et al. 2015; VQA v2 evaluation code).
_PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
_PERIOD_NOT_IN_NUMBER = re.compile(r"(?!<=\d)(\.)(?!\d)")
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's",
    "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itll": "it'll", "its": "it's",
    "lets": "let's", "mightve": "might've", "mustve": "must've", "mustnt": "mustn't", "shes": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "thats": "that's", "theres": "there's",
    "theyd": "they'd", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "wasnt": "wasn't",
    "wed": "we'd", "weve": "we've", "werent": "weren't", "whats": "what's", "whered": "where'd",
    "wheres": "where's", "whos": "who's", "whove": "who've", "wont": "won't", "wouldve": "would've",
    "wouldnt": "wouldn't", "yall": "y'all", "youd": "you'd", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}


def normalize_answer(answer: str) -> str:
    """The VQA challenge's normalisation: punctuation, number words, articles, contractions."""
    original = answer.replace("\n", " ").replace("\t", " ").strip()
    text = original
    for mark in _PUNCTUATION:
        if mark + " " in original or " " + mark in original or _COMMA_BETWEEN_DIGITS.search(original):
            text = text.replace(mark, "")
        else:
            text = text.replace(mark, " ")
    text = _PERIOD_NOT_IN_NUMBER.sub("", text)
    words = []
    for word in text.lower().split():
        word = _NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def vqa_accuracy(prediction: str, references: Sequence[str]) -> float:
    """Accuracy of one answer against its human answers.

    With several references this is the standard VQA score: for each reference left out in
    turn, min(#other references equal to the prediction / 3, 1), averaged; with one reference
    it is exact match. Both sides are normalised first.
    """
    if not references:
        raise ValueError("vqa_accuracy needs at least one reference answer")
    predicted = normalize_answer(prediction)
    answers = [normalize_answer(r) for r in references]
    if len(answers) == 1:
        return float(predicted == answers[0])
    scores = []
    for left_out in range(len(answers)):
        matches = sum(1 for i, a in enumerate(answers) if i != left_out and a == predicted)
        scores.append(min(1.0, matches / 3.0))
    return sum(scores) / len(scores)


def mean_vqa_accuracy(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    if not predictions:
        return 0.0
    return sum(vqa_accuracy(p, r) for p, r in zip(predictions, references)) / len(predictions)


def tokenize_caption(text: str) -> str:
    """Lower-case and drop punctuation, as the COCO caption toolkit's tokenizer does."""
    return " ".join(re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower()))


def caption_scores(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """CIDEr and BLEU-1..4 over a corpus, from pycocoevalcap's scorers."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    keys = sorted(predictions)
    missing = [k for k in keys if not references.get(k)]
    if missing:
        raise ValueError(f"no reference captions for {missing[:3]}")
    res = {k: [tokenize_caption(predictions[k])] for k in keys}
    gts = {k: [tokenize_caption(r) for r in references[k]] for k in keys}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {"CIDEr": float(cider), **{f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)}}


def top1_accuracy(predictions: Sequence[str], labels: Sequence[str]) -> float:
    if len(predictions) != len(labels):
        raise ValueError("predictions and labels differ in length")
    return sum(p == t for p, t in zip(predictions, labels)) / len(labels) if labels else 0.0
