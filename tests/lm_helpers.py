"""Small causal LMs for the causal-LM language side: a tiny random Llama saved as a folder (with
a tokenizer that has a chat template), tiny GGUF files, and specs that point at them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from model_helpers import small_spec
from prismer_core.specs import ModelSpec, spec_from_dict

WORDS = ("a b c one two three red green blue circle square star triangle left right top bottom shapes picture "
         "of the and is what colour shape how many where written question answer describe image user assistant "
         "system . : ?").split()
#: Enough of a chat template to tell the chat path from the plain one.
CHAT_TEMPLATE = (
    "{% for m in messages %}[CLS] {{ m['role'] }} : {{ m['content'] }} [SEP] {% endfor %}"
    "{% if add_generation_prompt %}[CLS] assistant :{% endif %}"
)
TINY_LLAMA = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, max_position_embeddings=256, tie_word_embeddings=True)


def save_tiny_llama(folder: Path, chat: bool = True, seed: int = 2, **config) -> Path:
    """A random LlamaForCausalLM from a config and a WordPiece tokenizer, saved the way
    ``save_pretrained`` leaves a pre-trained model on disk."""
    from transformers import BertTokenizerFast, LlamaConfig, LlamaForCausalLM

    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocabulary)}, bos_token="[CLS]", eos_token="[SEP]")
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    shape = {**TINY_LLAMA, **config}
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(vocabulary), bos_token_id=2, eos_token_id=3, pad_token_id=0, **shape))
    model.save_pretrained(folder)
    return folder


def lm_decoder(weights: str | None, tokenizer: str | None = None, **fields) -> dict:
    """A ``decoder:`` section of kind causal_lm for the tiny Llama."""
    return {
        "kind": "causal_lm", "weights": weights, "tokenizer": tokenizer,
        "config": {"model_type": "llama", "vocab_size": 5 + len(WORDS), **TINY_LLAMA},
        "mapper": {"queries": 4, "layers": 1, "heads": 4},
        **fields,
    }


def tiny_lm_spec(folder: Path | str | None, **decoder) -> ModelSpec:
    """The tiny spec at 64 px with the tiny Llama as its frozen language side."""
    data = small_spec(**{"resampler.latents": 4, "resampler.layers": 1}).to_dict()
    data["decoder"] = lm_decoder(str(folder) if folder is not None else None, **decoder)
    data["frozen"] = ["vision.backbone", "decoder.lm"]
    return spec_from_dict(data, "tiny causal-LM spec")


def write_gguf(path: Path, tensor_type: str = "F32") -> Path:
    """A tiny GGUF file (llama metadata, two tensors); ``tensor_type`` other than F32 writes the
    second tensor's bytes under that quantisation type, readable or not."""
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.constants import GGML_QUANT_SIZES

    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_embedding_length(32)
    writer.add_tensor("token_embd.weight", np.zeros((16, 32), np.float32))
    kind = GGMLQuantizationType[tensor_type]
    if kind == GGMLQuantizationType.F32:
        writer.add_tensor("blk.0.attn_q.weight", np.zeros((32, 256), np.float32))
    else:  # 32 rows of 256 values, as that type's bytes
        block, size = GGML_QUANT_SIZES[kind]
        writer.add_tensor("blk.0.attn_q.weight", np.zeros((32, 256 // block * size), np.uint8),
                          raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
