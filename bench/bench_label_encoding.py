"""How long semantic labels take to become 64-channel maps (prismer_core.semantic).

Measures, in one run on this machine:
1. fitting the MiniLM projection from nothing (embedding the whole fitting vocabulary);
2. loading the fitted encoder again (what every later run pays);
3. encoding a 384×384 label map with 30 labels, by table lookup (``LabelEncoder.encode``)
   against a per-label mask fill like the Prismer reference code, side by side.

Prints a Markdown section for docs/benchmarks.md. Run: .venv/bin/python bench/bench_label_encoding.py
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from datetime import date

import numpy as np


def best_of(runs: int, call) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def mask_fill(encoder, semantic) -> np.ndarray:
    """One boolean mask per label present, filled with its vector (the reference approach)."""
    table = encoder.table(semantic.names)
    out = np.empty((*semantic.labels.shape, table.shape[1]), np.float32)
    for label in np.unique(semantic.labels):
        out[semantic.labels == label] = table[label]
    return out


def main() -> None:
    os.environ["PRISMER_HOME"] = tempfile.mkdtemp(prefix="prismer-bench-")
    from prismer_core import SemanticMap
    from prismer_core.registry import get_registry
    from prismer_core.semantic import fitting_vocabulary, load_label_encoder

    start = time.perf_counter()
    encoder = load_label_encoder("minilm")
    fit_s = time.perf_counter() - start
    reload_s = best_of(3, lambda: load_label_encoder("minilm"))

    rng = np.random.default_rng(0)
    names = [f"object {i}" for i in range(30)]
    blocks = rng.integers(0, len(names) + 1, size=(24, 24))
    semantic = SemanticMap(np.kron(blocks, np.ones((16, 16), np.int64)), names)
    encoder.encode(semantic)  # embed the names once; both methods then read the same table
    np.testing.assert_array_equal(encoder.encode(semantic), mask_fill(encoder, semantic))
    lookup_s = best_of(20, lambda: encoder.encode(semantic))
    masks_s = best_of(20, lambda: mask_fill(encoder, semantic))

    print(f"## Semantic label encoding ({date.today()}, {platform.machine()}, {os.cpu_count()} cores, CPU)\n")
    print("`bench/bench_label_encoding.py`; absolute times are indicative, the ratio is measured side by side.\n")
    print("| what | time |")
    print("|---|---|")
    words = len(fitting_vocabulary(get_registry()))
    print(f"| fit the MiniLM projection from nothing (import, load the model, embed {words} words, SVD) | {fit_s:.1f} s |")
    print(f"| load the fitted encoder again | {reload_s * 1000:.1f} ms |")
    print(f"| encode 384×384, 30 labels: table lookup | {lookup_s * 1000:.1f} ms |")
    print(f"| encode 384×384, 30 labels: per-label mask fill | {masks_s * 1000:.1f} ms |")
    print(f"| ratio mask fill / lookup | {masks_s / lookup_s:.1f}× |")


if __name__ == "__main__":
    main()
