"""The one text module: what training teaches is what inference sends, token for token."""

from __future__ import annotations

import pytest
import torch

from model_helpers import small_spec
from prismer_core.errors import PrismerError
from prismer_core.text import IGNORE_INDEX, TextCodec, task_prompt


@pytest.fixture(scope="module")
def codec() -> TextCodec:
    return TextCodec.for_decoder(small_spec().decoder)


def test_training_rows_start_with_the_prompt_inference_sends(codec):
    prompts = [task_prompt("vqa", "what colour is the circle?"), task_prompt("caption", caption_prompt="a picture of"), ""]
    targets = ["red", "two shapes: a red circle on the left", "a blue square"]
    batch = codec.training_batch(prompts, targets)
    sent = codec.prompt_batch(prompts)
    for row, prompt in enumerate(prompts):
        taught = batch.input_ids[row][batch.attention_mask[row].bool()].tolist()
        learnt = (batch.labels[row] != IGNORE_INDEX).nonzero()[0, 0].item()  # first learnt position
        assert taught[:learnt] == sent.ids[row][sent.valid[row]].tolist() == codec.prompt_tokens(prompt)
        # what follows is the target and the end token, the way candidates are scored
        candidates = codec.candidate_batch([prompt], [targets[row]])
        assert taught[learnt:] == candidates.ids[0][candidates.valid[0]].tolist()
        assert taught[-1] == codec.end_id and taught[0] == codec.begin_id
    assert (batch.labels[batch.attention_mask == 0] == IGNORE_INDEX).all()  # padding is never learnt


def test_the_bert_vocabulary_begins_with_cls_and_ends_with_sep(codec):
    tokenizer = codec.tokenizer
    assert (codec.begin_id, codec.end_id, codec.pad_id) == (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id)
    assert codec.prompt_tokens("a picture of") == tokenizer("a picture of")["input_ids"][:-1]  # [CLS] ... without [SEP]


def test_prompts_are_left_padded_and_candidates_right_padded(codec):
    prompts = codec.prompt_batch(["a", "a much longer prompt than that"])
    assert prompts.valid[0].tolist()[-1] and not prompts.valid[0].tolist()[0]  # pads first
    assert (prompts.ids[~prompts.valid] == codec.pad_id).all()
    candidates = codec.candidate_batch(["q"], ["one", "a small dog"])
    assert candidates.valid[0].tolist()[0] and not candidates.valid[0].tolist()[-1]  # pads last
    assert codec.decode([codec.tokens("two shapes")]) == ["two shapes"]
    with pytest.raises(PrismerError, match="all empty or all given"):
        codec.candidate_batch(["", "q"], ["one"])
    with pytest.raises(PrismerError, match="not shorter than max length 4"):
        codec.training_batch(["a long prompt here"], ["x"], max_length=4)
    assert isinstance(prompts.ids, torch.Tensor) and prompts.ids.dtype == torch.long
