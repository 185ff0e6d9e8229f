"""The label store: expert outputs written once by `prismer label`, read back by training.

Layout (format 2)::

    STORE/
      store.json                 which experts (name, version, kind, channels, plugin, settings)
      images.jsonl               for people: each image key and where it was labelled from
      <expert>/<k[:2]>/<key>.npz one file per expert and image
      previews/<expert>/<k[:2]>/<key>.png   optional pictures (--visualize)

An image's key is the SHA-256 of its file's bytes (:func:`prismer_core.data.images.content_key`),
so the same file finds its labels however it is named or reached: a folder labelled as
``photos/`` serves a manifest that names the files ``images/train/…``. Format 1 stores, keyed
by relative path, are refused with the command that makes a new one.

Dense files hold ``map`` (float16, H×W×C in [-1, 1]). Semantic files hold ``labels``
(int32, H×W, 0 = background, k = ``names[k-1]``), ``names`` (unicode array) and, when the
expert has them, ``instances`` (int32, H×W). Every file is written atomically, so a file
that exists is complete: an interrupted run resumes by skipping what exists.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_bytes_atomic, write_json_atomic
from ..errors import PrismerError
from ..experts.contract import DenseMap, ExpertOutput, ExpertSpec, SemanticMap
from ..experts.settings import describe_settings, settings_record
from .images import content_key

FORMAT = 2
MANIFEST = "store.json"
INDEX = "images.jsonl"
#: A temporary file older than this was left by a killed run (a live write takes milliseconds).
STALE_TEMP_SECONDS = 300


class LabelStoreError(PrismerError):
    """A label store that is missing, unreadable, or made by other expert versions."""


class LabelStore:
    """Read and write expert outputs under one directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # -- metadata ------------------------------------------------------------------------
    def metadata(self) -> dict:
        path = self.root / MANIFEST
        if not path.exists():
            return {"format": FORMAT, "experts": {}}
        try:
            meta = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise LabelStoreError(f"label store {self.root}: unreadable {MANIFEST} ({exc})") from None
        if meta.get("format") == 1:
            raise LabelStoreError(
                f"label store {self.root} was written by an older prismer (format 1, keyed by file path, which "
                f"breaks when the same image is reached by another path): label the images again into a new "
                f"folder, e.g. prismer label IMAGES --experts {','.join(meta.get('experts', {})) or 'NAMES'} --out NEW_FOLDER"
            )
        if meta.get("format") != FORMAT:
            raise LabelStoreError(f"label store {self.root}: format {meta.get('format')!r}, expected {FORMAT}")
        return meta

    def experts(self) -> dict[str, dict]:
        return dict(self.metadata().get("experts", {}))

    def open_for(
        self,
        specs: Mapping[str, ExpertSpec],
        plugins: Mapping[str, str],
        settings: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        """Record the experts about to write here, with the settings they run with; refuse if
        the store holds labels of another version or other settings (one folder, one meaning)."""
        meta = self.metadata()
        recorded = meta.setdefault("experts", {})
        for name, spec in specs.items():
            entry = {
                **spec.record(),
                "plugin": plugins.get(name, ""),
                "settings": settings_record((settings or {}).get(name, {})),
            }
            entry.pop("name")
            old = recorded.get(name)
            if old is not None and old.get("version") != spec.version:
                raise LabelStoreError(
                    f"label store {self.root} holds '{name}' labels from version {old.get('version')}, "
                    f"but the installed '{name}' is version {spec.version}: label into a new --out folder"
                )
            if old is not None and "settings" in old and old["settings"] != entry["settings"]:
                raise LabelStoreError(
                    f"label store {self.root} holds '{name}' labels made with {describe_settings(old['settings'])}, "
                    f"but this run uses {describe_settings(entry['settings'])}: label into a new --out folder"
                )
            recorded[name] = entry
        write_json_atomic(self.root / MANIFEST, meta)
        self.remove_stale_temp_files()

    def settings(self, expert: str) -> dict[str, str] | None:
        """The settings ``expert``'s labels were made with (None: a store that did not record them)."""
        return self.experts().get(expert, {}).get("settings")

    def check_settings(self, explicit: Mapping[str, Mapping[str, Any]]) -> None:
        """Refuse settings given for a run that reads this store when the labels were made
        with other values: with stored labels the experts do not run, so they would be ignored."""
        for name, values in explicit.items():
            recorded = self.settings(name)
            if recorded is None:
                continue
            for key, value in settings_record(values).items():
                if recorded.get(key) != value:
                    made = f"{key}={recorded[key]}" if key in recorded else f"no {key} setting"
                    raise LabelStoreError(
                        f"label store {self.root} holds '{name}' labels made with {made}, but {name}.{key}={value} "
                        f"was given: drop the setting, or label again into a new folder with it"
                    )

    def remove_stale_temp_files(self) -> int:
        """Delete temporary files left by killed runs; young ones may belong to a live shard."""
        cutoff = time.time() - STALE_TEMP_SECONDS
        stale = [p for p in self.root.rglob(".*.tmp") if p.stat().st_mtime < cutoff]
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)

    def check_versions(self, specs: Mapping[str, ExpertSpec]) -> None:
        """Refuse to read labels written by other versions of the experts (or missing ones)."""
        recorded = self.experts()
        for name, spec in specs.items():
            if name not in recorded:
                raise LabelStoreError(
                    f"label store {self.root} has no '{name}' labels (it has: {', '.join(recorded) or 'none'})"
                )
            if recorded[name]["version"] != spec.version:
                raise LabelStoreError(
                    f"label store {self.root} has '{name}' {recorded[name]['version']} labels; "
                    f"the run uses '{name}' {spec.version}"
                )

    # -- files ---------------------------------------------------------------------------
    def path(self, expert: str, key: str) -> Path:
        return self.root / expert / key[:2] / f"{key}.npz"

    def preview_path(self, expert: str, key: str) -> Path:
        return self.root / "previews" / expert / key[:2] / f"{key}.png"

    def note_image(self, key: str, where: str) -> None:
        """Record for people where the image of ``key`` was labelled from (one JSON line,
        appended in one write, so processes labelling shards of one store do not interleave)."""
        line = json.dumps({"key": key, "image": where}) + "\n"
        with open(self.root / INDEX, "a", encoding="utf-8") as handle:
            handle.write(line)

    def images(self) -> dict[str, list[str]]:
        """``{key: [where it was labelled from, ...]}`` from the index (a line cut by a kill is skipped)."""
        found: dict[str, list[str]] = {}
        path = self.root / INDEX
        for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            found.setdefault(record["key"], []).append(record["image"])
        return found

    @staticmethod
    def key_of(image: str | Path) -> str:
        """The key the image file at ``image`` is stored under (its content hash)."""
        return content_key(Path(image).read_bytes())

    def keys(self, expert: str) -> set[str]:
        """The keys of every image ``expert`` has labels for here."""
        return {path.stem for path in (self.root / expert).rglob("*.npz")}

    def read_file(self, expert: str, image: str | Path) -> ExpertOutput:
        """The labels of the image file at ``image``, found by its content."""
        return self.read(expert, self.key_of(image), str(image))

    def has(self, expert: str, key: str) -> bool:
        return self.path(expert, key).exists()

    def write(self, expert: str, key: str, output: ExpertOutput) -> Path:
        arrays: dict[str, np.ndarray]
        if isinstance(output, DenseMap):
            arrays = {"map": output.data.astype(np.float16)}
        else:
            arrays = {
                "labels": output.labels.astype(np.int32),
                "names": np.asarray(output.names, dtype=np.str_).reshape(-1),
            }
            if output.instances is not None:
                arrays["instances"] = output.instances.astype(np.int32)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        target = self.path(expert, key)
        write_bytes_atomic(target, buffer.getvalue())
        return target

    def read(self, expert: str, key: str, where: str = "") -> ExpertOutput:
        """The labels ``expert`` wrote for the image of ``key`` (``where`` names it in errors)."""
        path = self.path(expert, key)
        try:
            with np.load(path, allow_pickle=False) as data:
                if "map" in data:
                    return DenseMap(data["map"].astype(np.float32))
                instances = data["instances"] if "instances" in data else None
                return SemanticMap(data["labels"], [str(n) for n in data["names"]], instances)
        except FileNotFoundError:
            raise LabelStoreError(
                f"label store {self.root} has no '{expert}' labels for image {where or key}: "
                "label it into this store first (prismer label)"
            ) from None
        except (OSError, ValueError, KeyError) as exc:
            raise LabelStoreError(f"label store file {path} is unreadable: {exc}") from None
