"""The example images a page offers: an allow-list made once, so no request names a path.

By default they come from the data a checkpoint was trained on: the test split beside the
training manifest (``test.jsonl``, as `prismer data demo` writes it), else the validation
manifest the run recorded. ``--examples DIR`` gives any folder of images instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..data.images import BadInputError, ImageFile
from ..data.manifest import read_images

#: How many example images the page shows at most.
MAX_EXAMPLES = 12


@dataclass(frozen=True)
class Example:
    """One offered image: the page knows it by ``id`` (its position) and shows ``name``."""

    id: int
    name: str
    path: Path


class Examples:
    """A fixed list of example images; :meth:`get` is the only way from a request to a file."""

    def __init__(self, paths: list[Path], source: str = "") -> None:
        self.items = [Example(i, path.name, path) for i, path in enumerate(paths[:MAX_EXAMPLES])]
        self.source = source

    def __len__(self) -> int:
        return len(self.items)

    def get(self, example_id: int) -> Example | None:
        return self.items[example_id] if 0 <= example_id < len(self.items) else None

    @classmethod
    def from_folder(cls, folder: str | Path) -> "Examples":
        """Every image of ``folder`` (sorted), or a :class:`BadInputError` naming it."""
        if not Path(folder).is_dir():
            raise BadInputError("not found" if not Path(folder).exists() else "not a folder")
        return cls(_files(folder), str(folder))

    @classmethod
    def from_checkpoint_data(cls, checkpoint_extra: dict, checkpoint: str | Path | None = None) -> "Examples":
        """The held-out images of the data a checkpoint was trained on, when they are still there.

        ``checkpoint``: the checkpoint's folder, whose run folder is looked in when the one the
        checkpoint records is not found (it is recorded as given to training, maybe relative)."""
        for manifest in _held_out_manifests(checkpoint_extra, checkpoint):
            try:
                paths = _files(manifest)
            except (BadInputError, OSError):
                continue
            paths = [p for p in paths if p.is_file()]
            if paths:
                return cls(paths, str(manifest))
        return cls([])


def _files(source: str | Path) -> list[Path]:
    """The image files a folder or manifest names (tar members and pixels are not offered)."""
    return [image.path for image in read_images(source) if isinstance(image, ImageFile)]


def _held_out_manifests(checkpoint_extra: dict, checkpoint: str | Path | None = None) -> list[Path]:
    """test.jsonl beside each training manifest, then the validation manifests, of the run
    recorded in the checkpoint (``extra.training.run``/run.json), else of the run folder that
    holds the checkpoint (``RUN/checkpoints/step-N``)."""
    recorded = (checkpoint_extra.get("training") or {}).get("run")
    runs = [Path(recorded)] if recorded else []
    if checkpoint is not None:
        runs.append(Path(checkpoint).resolve().parent.parent)
    for run in runs:
        try:
            config = json.loads((run / "run.json").read_text()).get("config", {})
        except (OSError, ValueError):
            continue
        beside = [Path(p).with_name("test.jsonl") for p in config.get("data", []) if str(p).endswith(".jsonl")]
        return [p for p in [*beside, *map(Path, config.get("val_data", []))] if p.is_file()]
    return []
