"""The Prismer model: expert stems, the Experts Resampler, adaptors, and the two backbones.

    from prismer_core.model import build_model
    model = build_model("tiny", experts={"edge": edge_spec})   # {} -> PrismerZ
    out = model(inputs, input_ids, attention_mask, labels=labels)   # inputs: ModelInputs
    codec = TextCodec.for_decoder(model.spec.decoder)              # text <-> ids: prismer_core.text
    ids = model.generate(inputs, codec.prompt_batch(["a picture of"]), end_token_id=codec.end_id)
    captions = codec.decode(ids)

Modules, in reading order: layers (attention, adaptor), stems, resampler, vision (encoder),
decoder (RoBERTa-style, cached), generation (greedy/beam search), prismer (the whole);
packed: oneDNN-packed weights for CPU inference (``pack_for_inference``, the Predictor's).
"""

from .packed import pack_for_inference
from .prismer import PART_PATTERNS, PartCount, Prismer, PrismerOutput, build_model, part_of

__all__ = ["PART_PATTERNS", "PartCount", "Prismer", "PrismerOutput", "build_model", "pack_for_inference", "part_of"]
