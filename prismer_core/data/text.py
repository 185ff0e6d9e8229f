"""The text side of a sample: task prompts and token ids with the prompt masked from the loss.

Training and inference must build the same token sequence: ``[BOS] prompt target [EOS]``,
where the model learns only ``target [EOS]`` (prompt and padding get label -100). Inference
feeds ``[BOS] prompt`` and generates the rest; :func:`prompt_ids` gives exactly that prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..errors import PrismerError

IGNORE_INDEX = -100
VQA_TEMPLATE = "question: {question} answer:"


def task_prompt(task: str, question: str = "", caption_prompt: str = "") -> str:
    """The text the model is given: ``caption_prompt`` for captions, the question for VQA."""
    if task == "caption":
        return caption_prompt
    if task == "vqa":
        return VQA_TEMPLATE.format(question=question)
    raise PrismerError(f"unknown task {task!r}")


def special_ids(tokenizer: Any) -> tuple[int, int, int]:
    """(begin, end, pad) ids: RoBERTa's <s> </s> <pad>, or BERT's [CLS] [SEP] [PAD]."""
    begin = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
    if begin is None or end is None:
        raise PrismerError(f"tokenizer {type(tokenizer).__name__} has no begin/end-of-sequence tokens")
    return begin, end, pad


def _tokens(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """``[BOS] prompt``: the prefix inference continues from."""
    return [special_ids(tokenizer)[0], *_tokens(tokenizer, prompt)]


def encode_for_training(
    tokenizer: Any, prompts: Sequence[str], targets: Sequence[str], max_length: int = 64
) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (HF convention: labels
    line up with ``input_ids``; the model shifts them). Long targets are truncated."""
    _, end, pad = special_ids(tokenizer)
    rows: list[tuple[list[int], int]] = []
    for prompt, target in zip(prompts, targets):
        head = prompt_ids(tokenizer, prompt)
        body = _tokens(tokenizer, f" {target}" if prompt else target) + [end]
        if len(head) >= max_length:
            raise PrismerError(f"prompt {prompt!r} is {len(head)} tokens, not shorter than max length {max_length}")
        ids = (head + body)[:max_length]
        rows.append((ids, len(head)))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, prompt_length) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        labels[row, prompt_length : len(ids)] = torch.tensor(ids[prompt_length:])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
