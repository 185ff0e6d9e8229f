"""The Prismer model: expert stems, the Experts Resampler, adaptors, and the two backbones.

    from prismer_core.model import build_model
    model = build_model("tiny", experts={"edge": edge_spec})   # {} -> PrismerZ
    out = model(batch, input_ids, attention_mask, labels=labels)   # out.loss, out.logits
    captions = model.generate(batch, prompt="a picture of")

Modules, in reading order: layers (attention, adaptor), stems, resampler, vision (encoder),
decoder (RoBERTa-style, cached), generation (greedy/beam search), prismer (the whole).
"""

from .prismer import PART_PATTERNS, PartCount, Prismer, PrismerOutput, build_model, load_tokenizer, part_of

__all__ = ["PART_PATTERNS", "PartCount", "Prismer", "PrismerOutput", "build_model", "load_tokenizer", "part_of"]
