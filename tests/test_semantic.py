"""Semantic labels to 64 channels: real MiniLM embeddings, a tiny CLIP loaded from local files,
the fitted projection reused and saved into checkpoints, and the embedding cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from prismer_core import Expert, ExpertKind, ExpertSpec, PrismerError, SemanticMap, hookimpl
from prismer_core.registry import get_registry, load_registry
from prismer_core.semantic import (
    CHANNELS,
    EmbedderError,
    EmbeddingCache,
    LabelEncoder,
    Projection,
    ProjectionError,
    create_embedder,
    fitting_vocabulary,
    general_words,
    load_label_encoder,
    projection_path,
)
from prismer_core.semantic.projection import projection_identity
from prismer_experts.embedders import MiniLMEmbedder

TINY_CLIP = {
    "embed_dim": 96,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


class CountingMiniLM(MiniLMEmbedder):
    """The real MiniLM embedder, recording every batch it is asked to embed."""

    def __init__(self, **settings):
        super().__init__(**settings)
        self.calls: list[list[str]] = []

    def embed(self, texts):
        self.calls.append(list(texts))
        return super().embed(texts)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A fresh PRISMER_HOME for this module, and no environment that picks embedders."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("prismer-home")
        mp.setenv("PRISMER_HOME", str(path))
        # An empty open_clip cache, so `clip` (ViT-L-14/openai) is not ready even where it was downloaded.
        mp.setenv("PRISMER_CLIP_CACHE_DIR", str(tmp_path_factory.mktemp("empty-clip-cache")))
        for name in ("PRISMER_TEXT_EMBEDDER", "PRISMER_LOAD_PLUGINS", "PRISMER_CLIP_MODEL",
                     "PRISMER_CLIP_PRETRAINED", "PRISMER_MINILM_MODEL_PATH"):
            mp.delenv(name, raising=False)
        get_registry.cache_clear()
        yield path
    get_registry.cache_clear()


@pytest.fixture(scope="module")
def encoder(home) -> LabelEncoder:
    return load_label_encoder("minilm")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory, home) -> dict:
    """A tiny open_clip CLIP with fixed random weights, saved as a local-dir folder and a file."""
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = CLIP(**TINY_CLIP).eval()
    folder = tmp_path_factory.mktemp("tiny-clip")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP}))
    save_file(model.state_dict(), folder / "open_clip_model.safetensors")
    return {"model": model, "local_dir": f"local-dir:{folder}", "weights": folder / "open_clip_model.safetensors"}


def reference_clip_text(model, model_name: str, texts: list[str]) -> np.ndarray:
    import open_clip

    with torch.no_grad():
        return model.encode_text(open_clip.get_tokenizer(model_name)(texts), normalize=True).numpy()


def label_map(names: list[str], size=(32, 48)) -> SemanticMap:
    """Background everywhere, then one vertical band per name (label k in band k)."""
    labels = np.zeros(size, np.int64)
    for k in range(1, len(names) + 1):
        labels[4:-4, 10 * k : 10 * k + 8] = k
    return SemanticMap(labels, list(names))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


# -- the projection: fitted once, identified, reused ---------------------------------------
def test_projection_is_fitted_once_and_reused(home, encoder):
    path = projection_path(encoder.embedder_identity)
    assert path.parent == home / "projections" and path.is_file()
    assert encoder.channels == CHANNELS == 64
    vocabulary = fitting_vocabulary(get_registry())
    assert len(vocabulary) >= len(general_words()) >= 3000 and "background" in vocabulary
    assert encoder.embedder_identity.startswith("minilm:all-MiniLM-L6-v2@")
    assert encoder.identity == projection_identity(encoder.embedder_identity, vocabulary)
    assert encoder.identity.startswith(encoder.embedder_identity + "-")

    before = path.stat()
    counting = CountingMiniLM()
    again = load_label_encoder(counting)
    assert counting.calls == []  # nothing embedded, nothing refitted
    after = path.stat()
    assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)
    assert again.identity == encoder.identity
    np.testing.assert_array_equal(again.projection.components, encoder.projection.components)


def test_projection_fit_is_deterministic(home, encoder, tmp_path, monkeypatch):
    monkeypatch.setenv("PRISMER_HOME", str(tmp_path))
    refit = load_label_encoder("minilm", cache=EmbeddingCache(home / "embeddings.sqlite"))
    assert projection_path(refit.embedder_identity).parent == tmp_path / "projections"
    assert refit.identity == encoder.identity
    for name in ("mean", "components", "background"):
        np.testing.assert_array_equal(getattr(refit.projection, name), getattr(encoder.projection, name))
    assert refit.projection.scale == encoder.projection.scale


def test_new_plugins_do_not_refit_an_existing_projection(home, encoder, tmp_path, monkeypatch):
    class Crossings(Expert):
        spec = ExpertSpec(name="crossings", version="1", kind=ExpertKind.SEMANTIC,
                          vocabulary=("zebra crossing", "pelican crossing"))

        def predict(self, images, context=None):
            raise NotImplementedError

    class Plugin:
        @hookimpl
        def register_experts(self, register):
            register(Crossings)

    extended = load_registry()
    extended.add_plugin(Plugin(), "crossings")
    assert "zebra crossing" in fitting_vocabulary(extended)

    reused = load_label_encoder("minilm", registry=extended)
    assert reused.identity == encoder.identity  # the fitted file wins: training and inference agree

    monkeypatch.setenv("PRISMER_HOME", str(tmp_path))  # where nothing was fitted yet
    fresh = load_label_encoder("minilm", registry=extended, cache=EmbeddingCache(home / "embeddings.sqlite"))
    assert fresh.embedder_identity == encoder.embedder_identity
    assert fresh.identity != encoder.identity


# -- encoding label maps -------------------------------------------------------------------
def test_encode_gives_one_vector_per_label(encoder):
    first = label_map(["dog", "cat", "dog"])
    out = encoder.encode(first)
    assert out.shape == (32, 48, 64) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= -1.0 and out.max() <= 1.0

    labels = first.labels
    dog, cat = out[labels == 1][0], out[labels == 2][0]
    for k in (1, 2, 3):
        assert (out[labels == k] == out[labels == k][0]).all()
    np.testing.assert_array_equal(out[labels == 3][0], dog)  # same name, same vector
    background = out[labels == 0]
    assert (background == encoder.projection.background).all()
    assert np.linalg.norm(dog - cat) > 0.1
    assert min(np.linalg.norm(background[0] - dog), np.linalg.norm(background[0] - cat)) > 0.1

    # Names are per image: 'dog' is label 2 here and still gets the same vector.
    second = encoder.encode(label_map(["cat", "dog"]))
    np.testing.assert_array_equal(second[label_map(["cat", "dog"]).labels == 2][0], dog)

    # The 64 channels keep meaning: a puppy is closer to a dog than a truck is.
    vectors = dict(zip(["dog", "puppy", "truck"], encoder.vectors(["dog", "puppy", "truck"]), strict=True))
    assert cosine(vectors["dog"], vectors["puppy"]) > cosine(vectors["dog"], vectors["truck"]) + 0.1

    # Words no list foresees (OCR) still land in range.
    ocr = encoder.encode(label_map(["EXIT 42b", "Zwölf Äpfel"]))
    assert ocr.min() >= -1.0 and ocr.max() <= 1.0 and np.isfinite(ocr).all()


def test_the_sample_encoder_hands_over_label_ids_and_their_table(encoder):
    """What a batch carries for a semantic expert: int32 ids and the image's table, which
    together are exactly ``encode``'s map; instance ids travel as int32 too."""
    from prismer_core.data.encoding import SampleEncoder
    from prismer_core.data.transforms import PairedTransform

    semantic = label_map(["dog", "cat", "dog"])
    semantic = SemanticMap(semantic.labels, semantic.names, semantic.labels.copy())
    spec = ExpertSpec("things", "1", ExpertKind.SEMANTIC, open_vocabulary=True, has_instances=True)
    samples = SampleEncoder(PairedTransform(48, train=False), (0.5,) * 3, (0.5,) * 3, {"things": spec}, encoder)
    image = np.zeros((32, 48, 3), np.uint8)
    inputs, _ = samples(image, {"things": semantic})
    ids, table = inputs.experts["things"][0], inputs.label_tables["things"][0]
    assert ids.dtype == torch.int32 and ids.shape == (48, 48) and table.shape == (4, 64)
    np.testing.assert_array_equal(table.numpy(), encoder.table(semantic.names))
    resized = SemanticMap(ids.numpy(), semantic.names)  # the transform resized the map: encode that
    np.testing.assert_array_equal(table[ids.long()].numpy(), encoder.encode(resized))
    assert inputs.instances["things"].dtype == torch.int32
    assert torch.equal(inputs.instances["things"][0], ids)  # same map, same nearest resize


def test_encode_rejects_labels_without_names(encoder):
    bad = SemanticMap(np.full((4, 4), 3, np.int64), ["dog"])
    with pytest.raises(PrismerError, match="only 1 label names"):
        encoder.encode(bad)


def test_embedding_cache_avoids_recomputation(home, encoder):
    words = ["walrus tusk museum", "platform 9 sign"]
    counting = CountingMiniLM()
    first = load_label_encoder(counting)
    out = first.encode(label_map([words[0], words[1], words[0], "dog"]))
    assert counting.calls == [words]  # only the misses, in one batch ('dog' is cached)
    first.encode(label_map(words))
    assert len(counting.calls) == 1

    later = CountingMiniLM()  # another run: a new encoder, same disk cache
    again = load_label_encoder(later).encode(label_map([words[0], words[1], words[0], "dog"]))
    assert later.calls == []
    np.testing.assert_array_equal(again, out)
    assert EmbeddingCache().count(encoder.embedder_identity) >= len(fitting_vocabulary(get_registry()))


# -- saving into a checkpoint --------------------------------------------------------------
def test_encoder_saved_into_a_checkpoint_loads_elsewhere(encoder, tmp_path, monkeypatch):
    saved = encoder.save(tmp_path / "checkpoint" / "label_projection.safetensors")
    assert not list(saved.parent.glob("*.tmp"))

    monkeypatch.setenv("PRISMER_HOME", str(tmp_path / "other-machine"))
    loaded = LabelEncoder.load(saved)
    assert loaded.identity == encoder.identity and loaded.embedder_identity == encoder.embedder_identity
    semantic = label_map(["fire hydrant", "bicycle", "background"])
    np.testing.assert_allclose(loaded.encode(semantic), encoder.encode(semantic), atol=1e-5)
    assert not (tmp_path / "other-machine" / "projections").exists()  # loaded, never refitted


def test_unusable_projection_files_are_clear_errors(encoder, tiny_clip, tmp_path):
    saved = encoder.save(tmp_path / "labels.safetensors")
    clip = create_embedder("clip", model=tiny_clip["local_dir"])
    with pytest.raises(EmbedderError, match="fitted with text embedder 'minilm:.*but 'clip:local-dir:"):
        LabelEncoder.load(saved, embedder=clip)

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(saved.read_bytes()[:100])
    with pytest.raises(ProjectionError, match="broken.safetensors"):
        Projection.load(broken)
    with pytest.raises(ProjectionError, match="not found"):
        LabelEncoder.load(tmp_path / "missing.safetensors")


# -- the CLIP text tower, from local files -------------------------------------------------
def test_clip_from_a_local_folder(home, encoder, tiny_clip):
    embedder = create_embedder("clip", model=tiny_clip["local_dir"])
    assert embedder.readiness().ready and embedder.dim == 96
    texts = ["a red car", "stop"]
    np.testing.assert_allclose(
        embedder.embed(texts), reference_clip_text(tiny_clip["model"], tiny_clip["local_dir"], texts), atol=1e-5
    )
    assert embedder.identity.startswith("clip:local-dir:")

    clip_encoder = load_label_encoder("clip", model=tiny_clip["local_dir"])
    assert clip_encoder.identity.startswith(embedder.identity + "-")
    assert clip_encoder.identity != encoder.identity
    assert projection_path(clip_encoder.embedder_identity) != projection_path(encoder.embedder_identity)
    out = clip_encoder.encode(label_map(["dog", "cat"]))
    assert out.shape == (32, 48, 64) and -1.0 <= out.min() and out.max() <= 1.0
    assert clip_encoder.projection.embedder_settings["model"] == tiny_clip["local_dir"]


def test_clip_from_a_checkpoint_file(home, tiny_clip, tmp_path):
    import open_clip
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    (tmp_path / "prismer-test-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(tmp_path / "prismer-test-tiny-clip.json")  # a custom architecture
    embedder = create_embedder("clip", model="prismer-test-tiny-clip", pretrained=str(tiny_clip["weights"]))
    assert embedder.identity.startswith("clip:prismer-test-tiny-clip:")
    np.testing.assert_allclose(
        embedder.embed(["zebra"]), reference_clip_text(tiny_clip["model"], "prismer-test-tiny-clip", ["zebra"]),
        atol=1e-5,
    )

    torch.manual_seed(1)
    save_file(CLIP(**TINY_CLIP).state_dict(), tmp_path / "other.safetensors")
    other = create_embedder("clip", model="prismer-test-tiny-clip", pretrained=str(tmp_path / "other.safetensors"))
    assert other.identity != embedder.identity  # other weights, other identity


def test_clip_without_local_weights_is_not_ready(home, tmp_path):
    from prismer_experts.embedders import ClipTextEmbedder

    cases = {
        ClipTextEmbedder(cache_dir=str(tmp_path)): "weights of ViT-L-14/openai are not on this machine",
        ClipTextEmbedder(pretrained=str(tmp_path / "nope.pt")): "is neither a file nor an open_clip tag",
        ClipTextEmbedder(model="ViT-Nope"): "open_clip has no model 'ViT-Nope'",
        ClipTextEmbedder(model=f"local-dir:{tmp_path}"): "no open_clip_config.json",
    }
    for embedder, reason in cases.items():
        readiness = embedder.readiness()
        assert not readiness.ready and reason in str(readiness)
    with pytest.raises(EmbedderError, match="text embedder 'clip' is not ready: weights of ViT-L-14/openai"):
        create_embedder("clip")


def test_default_embedder_is_clip_when_ready(home, tiny_clip, monkeypatch):
    assert create_embedder().name == "minilm"  # clip's weights are not here
    monkeypatch.setenv("PRISMER_CLIP_MODEL", tiny_clip["local_dir"])
    assert create_embedder().name == "clip"
    monkeypatch.setenv("PRISMER_TEXT_EMBEDDER", "minilm")
    assert create_embedder().name == "minilm"
    assert create_embedder("clip").name == "clip"  # the argument beats the environment
    with pytest.raises(EmbedderError, match="unknown text embedder 'minlm'; did you mean 'minilm'"):
        create_embedder("minlm")


# -- the command line ----------------------------------------------------------------------
def test_cli_lists_embedders_and_fits(home, encoder):
    from prismer_cli.main import app

    runner = CliRunner()
    result = runner.invoke(app, ["embedders", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert not rows["clip"]["ready"] and "not on this machine" in rows["clip"]["status"]
    assert rows["minilm"]["ready"] and rows["minilm"]["default"]
    assert rows["minilm"]["projection"] == str(projection_path(encoder.embedder_identity))

    fitted = runner.invoke(app, ["embedders", "fit", "minilm"])
    assert fitted.exit_code == 0 and fitted.stdout.split()[0] == encoder.identity

    unknown = runner.invoke(app, ["embedders", "fit", "minlm"])
    assert unknown.exit_code == 1 and "Error: unknown text embedder 'minlm'" in unknown.output
