"""Semantic label maps to 64 channels: text embedding of each label, then a fixed PCA.

    encoder = load_label_encoder()          # or load_label_encoder("minilm")
    maps = encoder.encode(semantic_map)     # float32 H×W×64 in [-1, 1]
    encoder.save(checkpoint_dir / "labels.safetensors")
    encoder = LabelEncoder.load(checkpoint_dir / "labels.safetensors")

Text embedders are plugins (``register_text_embedders`` hook); embeddings are cached on disk
and the projection is fitted once per embedder, then reused, so training and inference agree.
"""

from .cache import EmbeddingCache
from .embedder import (
    EMBEDDER_ENV,
    EmbedderError,
    TextEmbedder,
    create_embedder,
    describe_embedders,
    embedder_names,
    file_fingerprint,
)
from .encoder import LabelEncoder, load_label_encoder, projection_path
from .projection import CHANNELS, Projection, ProjectionError
from .vocabulary import BACKGROUND_TEXT, fitting_vocabulary, general_words

__all__ = [
    "BACKGROUND_TEXT",
    "CHANNELS",
    "EMBEDDER_ENV",
    "EmbedderError",
    "EmbeddingCache",
    "LabelEncoder",
    "Projection",
    "ProjectionError",
    "TextEmbedder",
    "create_embedder",
    "describe_embedders",
    "embedder_names",
    "file_fingerprint",
    "fitting_vocabulary",
    "general_words",
    "load_label_encoder",
    "projection_path",
]
