"""Greedy and beam-search decoding over a step function, so the search never knows about caches.

``step(tokens, valid, state) -> (log_probs, state)`` receives the whole sequence so far
([N, T] ids and their validity) and returns the next-token log-probabilities [N, V] of each
row. A cached step only runs the positions it has not seen; an uncached one reruns them all;
both give the same tokens. ``reorder(state, rows)`` follows the beams.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

Step = Callable[[torch.Tensor, torch.Tensor, Any], tuple[torch.Tensor, Any]]
Reorder = Callable[[Any, torch.Tensor], Any]


@dataclass
class _Finished:
    """The best finished hypotheses of one image, at most ``size``."""

    size: int
    items: list[tuple[float, list[int]]] = field(default_factory=list)

    def add(self, score: float, tokens: list[int]) -> None:
        self.items.append((score, tokens))
        self.items.sort(key=lambda item: -item[0])
        del self.items[self.size :]

    def full(self) -> bool:
        return len(self.items) >= self.size

    def worst(self) -> float:
        return self.items[-1][0] if self.full() else float("-inf")

    def best(self) -> list[int]:
        return self.items[0][1]


def greedy_search(
    step: Step, tokens: torch.Tensor, valid: torch.Tensor, state: Any, *,
    max_new_tokens: int, min_length: int, eos_id: int,
) -> list[list[int]]:
    """The most likely token at every step, until each row has written ``eos_id``."""
    rows = tokens.shape[0]
    out: list[list[int]] = [[] for _ in range(rows)]
    done = torch.zeros(rows, dtype=torch.bool)
    for position in range(max_new_tokens):
        log_probs, state = step(tokens, valid, state)
        if position < min_length:
            log_probs[:, eos_id] = float("-inf")
        chosen = log_probs.argmax(dim=-1)
        for row, token in enumerate(chosen.tolist()):
            if not done[row]:
                if token == eos_id:
                    done[row] = True
                else:
                    out[row].append(token)
        if bool(done.all()):
            break
        tokens = torch.cat([tokens, chosen[:, None]], dim=1)
        valid = torch.cat([valid, torch.ones_like(valid[:, :1])], dim=1)
    return out


def beam_search(
    step: Step, reorder: Reorder, tokens: torch.Tensor, valid: torch.Tensor, state: Any, *,
    num_beams: int, max_new_tokens: int, min_length: int, eos_id: int, length_penalty: float = 1.0,
) -> list[list[int]]:
    """Beam search as transformers does it: 2×beams candidates per step, hypotheses scored by
    summed log-probability / generated length ** length_penalty, a batch entry done when no
    running beam can beat its worst finished one.

    ``tokens``/``valid``/``state`` hold ``num_beams`` copies of each prompt, beams of one image
    next to each other.
    """
    rows = tokens.shape[0]
    batch = rows // num_beams
    scores = torch.full((batch, num_beams), float("-inf"))
    scores[:, 0] = 0.0  # all beams start equal: expand only the first at step one
    finished = [_Finished(num_beams) for _ in range(batch)]
    done = [False] * batch
    generated: list[list[int]] = [[] for _ in range(rows)]
    for position in range(max_new_tokens):
        log_probs, state = step(tokens, valid, state)
        vocab = log_probs.shape[-1]
        if position < min_length:
            log_probs[:, eos_id] = float("-inf")
        totals = (scores.reshape(-1, 1) + log_probs.float().cpu()).reshape(batch, num_beams * vocab)
        top_scores, top_ids = totals.topk(2 * num_beams, dim=1)
        next_rows, next_tokens, next_scores = [], [], []
        for b in range(batch):
            chosen: list[tuple[int, int, float]] = []
            if not done[b]:
                for rank, (score, flat) in enumerate(zip(top_scores[b].tolist(), top_ids[b].tolist())):
                    beam, token = divmod(flat, vocab)
                    row = b * num_beams + beam
                    if token == eos_id:
                        if rank < num_beams:
                            length = len(generated[row]) + 1
                            finished[b].add(score / length**length_penalty, list(generated[row]))
                    else:
                        chosen.append((row, token, score))
                    if len(chosen) == num_beams:
                        break
                best_running = chosen[0][2] / (position + 1) ** length_penalty
                done[b] = finished[b].full() and best_running <= finished[b].worst()
            if done[b]:  # keep shapes: pad with dummies that are never read
                chosen = [(b * num_beams, eos_id, float("-inf"))] * num_beams
            for row, token, score in chosen:
                next_rows.append(row)
                next_tokens.append(token)
                next_scores.append(score)
        if all(done):
            break
        index = torch.tensor(next_rows)
        generated = [generated[r] + [t] for r, t in zip(next_rows, next_tokens)]
        scores = torch.tensor(next_scores).reshape(batch, num_beams)
        state = reorder(state, index.to(tokens.device))
        tokens = torch.cat([tokens.index_select(0, index.to(tokens.device)),
                            torch.tensor(next_tokens, device=tokens.device)[:, None]], dim=1)
        valid = torch.cat([valid.index_select(0, index.to(valid.device)), torch.ones_like(valid[:, :1])], dim=1)
    for b in range(batch):
        if not done[b]:  # ran out of tokens: running beams count as they are
            for beam in range(num_beams):
                row = b * num_beams + beam
                if scores[b, beam] > float("-inf"):
                    finished[b].add(float(scores[b, beam]) / max(len(generated[row]), 1) ** length_penalty, generated[row])
    return [finished[b].best() for b in range(batch)]
