"""Training data as users have it: JSONL manifests, COCO captions JSON, webdataset tar shards.

Every reader turns its rows into :class:`Sample` objects, one per (row, task). A row that
cannot be used (bad JSON, a missing key, a missing or empty image file) is a :class:`BadRow`
naming its ``file:line``; the caller decides whether it stops the run or is skipped and
counted (``on_bad_row``). Images are decoded later, by the data loader, which reports an
undecodable image the same way (see :mod:`prismer_core.data.dataset`).

Formats:

* JSONL, one object per line: ``{"image": "img/1.png", "caption": "..."}`` or
  ``{"image": ..., "question": "...", "answer": "red"}`` (``answer``/``answers``: a string or a
  list of reference answers; an optional ``type``, such as "colour", scores each kind of question
  apart). One file may mix both kinds of rows. Paths are relative to the manifest.
* COCO captions JSON (``{"images": [{"id", "file_name"}], "annotations": [{"image_id",
  "caption"}]}``): one caption sample per annotation; file names are relative to
  ``image_root`` (default: the JSON's folder).
* webdataset tar shards (a ``.tar`` file, or a folder of them): members sharing a basename
  form one sample: an image (``.jpg``/``.png``/``.webp``…) plus ``.txt`` (caption) and/or
  ``.json`` (``caption``, ``question``, ``answer(s)``). Read with the standard ``tarfile``
  module; images are read back by byte offset, so nothing is unpacked.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import PrismerError
from .images import IMAGE_SUFFIXES, BadImageError, image_key, read_rgb

TASKS = ("caption", "vqa")
BAD_ROW_POLICIES = ("skip", "stop")


class BadRowError(PrismerError):
    """A manifest row that cannot be used, raised when ``on_bad_row='stop'``."""


class ManifestError(PrismerError):
    """A manifest that cannot be used at all (missing, empty, unknown format)."""


@dataclass(frozen=True)
class TarMember:
    """Where an image's bytes lie inside a tar shard (read back with one seek)."""

    shard: Path
    offset: int
    size: int


@dataclass(frozen=True)
class Sample:
    """One training example: an image and the text to learn for one task."""

    key: str  # the image's name in a label store
    where: str  # file:line (or shard:member) for messages
    task: str  # caption | vqa
    image: Path | TarMember
    caption: str = ""
    question: str = ""
    answers: tuple[str, ...] = ()
    #: optional kind of question (the row's ``type`` or ``question_type``), for per-kind scores
    question_type: str = ""


@dataclass(frozen=True)
class BadRow:
    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class Dataset:
    """The samples read from one or more manifests, and the rows that were skipped."""

    samples: list[Sample] = field(default_factory=list)
    bad_rows: list[BadRow] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def extend(self, other: "Dataset") -> None:
        self.samples.extend(other.samples)
        self.bad_rows.extend(other.bad_rows)
        self.sources.extend(other.sources)

    def count(self, task: str) -> int:
        return sum(1 for s in self.samples if s.task == task)


def parse_tasks(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"caption,vqa"`` -> ``("caption", "vqa")``, refusing unknown task names."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    tasks = tuple(dict.fromkeys(p.strip() for p in parts if p.strip()))
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise PrismerError(f"--task must be one or more of {', '.join(TASKS)} (comma-separated), got {text!r}")
    return tasks


def load_data(
    paths: str | Path | Iterable[str | Path],
    tasks: Sequence[str] = ("caption",),
    on_bad_row: str = "stop",
    image_root: str | Path | None = None,
) -> Dataset:
    """Read every manifest in ``paths`` into samples for ``tasks``.

    With ``on_bad_row='stop'`` the first bad row raises :class:`BadRowError` naming its
    ``file:line``; with ``'skip'`` bad rows are collected in ``Dataset.bad_rows``.
    """
    if on_bad_row not in BAD_ROW_POLICIES:
        raise PrismerError(f"--on-bad-row must be one of {', '.join(BAD_ROW_POLICIES)}, got {on_bad_row!r}")
    if isinstance(paths, (str, Path)):
        paths = [paths]
    dataset = Dataset()
    for path in paths:
        path = Path(path)
        reader = _reader_for(path)
        part = Dataset(sources=[str(path)])
        for item in reader(path, tasks, Path(image_root) if image_root else None):
            if isinstance(item, BadRow):
                if on_bad_row == "stop":
                    raise BadRowError(f"{item} (pass --on-bad-row skip to skip bad rows)")
                part.bad_rows.append(item)
            else:
                part.samples.append(item)
        if not part.samples:
            problem = f"; {len(part.bad_rows)} bad rows, the first: {part.bad_rows[0]}" if part.bad_rows else ""
            raise ManifestError(f"{path} holds no usable {'/'.join(tasks)} samples{problem}")
        dataset.extend(part)
    if not dataset.sources:
        raise ManifestError("no training data given (pass --data MANIFEST)")
    return dataset


def _reader_for(path: Path):
    if not path.exists():
        raise ManifestError(f"data not found: {path}")
    if path.is_dir():
        if not any(path.glob("*.tar")):
            raise ManifestError(f"folder {path} holds no .tar shards")
        return read_tar_shards
    if path.stat().st_size == 0:
        raise ManifestError(f"manifest {path} is an empty file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl
    if suffix == ".json":
        return read_coco_captions
    if suffix == ".tar":
        return read_tar_shards
    raise ManifestError(f"{path}: unknown manifest format (expected .jsonl, COCO .json, .tar shards or a folder of them)")


# -- rows -> samples -----------------------------------------------------------------------
#: The key that marks a row as meant for a task.
TASK_KEYS = {"caption": "caption", "vqa": "question"}


def _samples_from_row(
    row: object, tasks: Sequence[str], where: str, key: str, image: Path | TarMember
) -> list[Sample] | BadRow:
    """The samples a row gives for ``tasks``, or why it is bad.

    A row may serve several tasks. A row meant only for a task not asked for (a caption row
    in a ``--task vqa`` run over a mixed manifest) gives no samples and is not bad; a row
    with a malformed value, or with no task key at all, is bad.
    """
    if not isinstance(row, dict):
        return BadRow(where, f"expected a JSON object, got {type(row).__name__}")
    samples: list[Sample] = []
    problems: list[str] = []
    if "caption" in tasks and "caption" in row:
        caption = row["caption"]
        if isinstance(caption, str) and caption.strip():
            samples.append(Sample(key, where, "caption", image, caption=caption.strip()))
        else:
            problems.append("'caption' must be a non-empty string")
    if "vqa" in tasks and "question" in row:
        question, answers = row["question"], _answers(row)
        if not (isinstance(question, str) and question.strip()):
            problems.append("'question' must be a non-empty string")
        elif isinstance(answers, str):
            problems.append(answers)
        else:
            kind = row.get("type", row.get("question_type", ""))
            samples.append(Sample(key, where, "vqa", image, question=question.strip(), answers=answers,
                                  question_type=kind.strip() if isinstance(kind, str) else ""))
    if problems:
        return BadRow(where, "; ".join(problems))
    if samples or any(row_key in row for row_key in TASK_KEYS.values()):
        return samples
    wanted = " or ".join(f"'{TASK_KEYS[t]}'" for t in tasks)
    return BadRow(where, f"missing key {wanted}")


def _answers(row: dict) -> tuple[str, ...] | str:
    """The reference answers of a row, or why there are none."""
    key = "answers" if "answers" in row else "answer"
    if key not in row:
        return "missing key 'answer'"
    value = row[key]
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v.strip() for v in values):
        return f"'{key}' must be a non-empty string or a list of them"
    return tuple(v.strip() for v in values)


def _image_problem(path: Path) -> str | None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return f"image not found: {path}"
    except OSError as exc:
        return f"image {path} cannot be read: {exc.strerror}"
    return f"image file {path} is empty" if size == 0 else None


# -- JSONL ---------------------------------------------------------------------------------
def read_jsonl(path: Path, tasks: Sequence[str], image_root: Path | None = None) -> Iterator[Sample | BadRow]:
    root = image_root or path.parent
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield BadRow(where, f"not valid JSON ({exc.msg})")
                continue
            image = row.get("image") if isinstance(row, dict) else None
            if isinstance(row, dict) and not (isinstance(image, str) and image):
                yield BadRow(where, "missing key 'image'" if "image" not in row else "'image' must be a path")
                continue
            yield from _file_row(row, tasks, where, root, image if isinstance(image, str) else "")


def _file_row(row: object, tasks: Sequence[str], where: str, root: Path, image: str) -> Iterator[Sample | BadRow]:
    result = _samples_from_row(row, tasks, where, "", Path())
    if isinstance(result, BadRow):
        yield result
        return
    relative = Path(image)
    full = relative if relative.is_absolute() else root / relative
    problem = _image_problem(full)
    if problem:
        yield BadRow(where, problem)
        return
    # the same key `prismer label MANIFEST` gives this image, so label stores line up
    key = image_key(full if relative.is_absolute() else relative, root)
    for sample in result:
        yield replace(sample, key=key, image=full)


# -- COCO captions -------------------------------------------------------------------------
def read_coco_captions(path: Path, tasks: Sequence[str], image_root: Path | None = None) -> Iterator[Sample | BadRow]:
    if tuple(tasks) != ("caption",) and "caption" not in tasks:
        raise ManifestError(f"{path}: a COCO captions file only holds captions (use --task caption)")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(document, dict) or not isinstance(document.get("images"), list) or not isinstance(document.get("annotations"), list):
        raise ManifestError(f"{path}: a COCO captions file needs 'images' and 'annotations' lists")
    root = image_root or path.parent
    files: dict[object, str] = {}
    for index, image in enumerate(document["images"]):
        if isinstance(image, dict) and isinstance(image.get("file_name"), str) and "id" in image:
            files[image["id"]] = image["file_name"]
        else:
            yield BadRow(f"{path}:images[{index}]", "an image needs 'id' and 'file_name'")
    for index, annotation in enumerate(document["annotations"]):
        where = f"{path}:annotations[{index}]"
        if not isinstance(annotation, dict) or "image_id" not in annotation:
            yield BadRow(where, "missing key 'image_id'")
            continue
        name = files.get(annotation["image_id"])
        if name is None:
            yield BadRow(where, f"image_id {annotation['image_id']!r} is not in 'images'")
            continue
        yield from _file_row(annotation, ("caption",), where, root, name)


# -- webdataset tar shards -----------------------------------------------------------------
def read_tar_shards(path: Path, tasks: Sequence[str], image_root: Path | None = None) -> Iterator[Sample | BadRow]:
    shards = sorted(path.glob("*.tar")) if path.is_dir() else [path]
    for shard in shards:
        yield from _read_shard(shard, tasks)


def _read_shard(shard: Path, tasks: Sequence[str]) -> Iterator[Sample | BadRow]:
    groups: dict[str, dict[str, tarfile.TarInfo]] = defaultdict(dict)
    try:
        with tarfile.open(shard, "r:") as archive:
            members = archive.getmembers()
            for member in members:
                if member.isfile():
                    base, _, extension = PurePosixPath(member.name).name.partition(".")
                    prefix = str(PurePosixPath(member.name).parent)
                    groups[f"{prefix}/{base}" if prefix != "." else base][extension.lower()] = member
            texts = {
                member.name: archive.extractfile(member).read()  # type: ignore[union-attr]
                for group in groups.values() for ext, member in group.items() if ext in ("txt", "json")
            }
    except (tarfile.TarError, OSError) as exc:
        yield BadRow(str(shard), f"not a readable tar shard ({exc})")
        return
    for base, group in groups.items():
        where = f"{shard}:{base}"
        image = next((m for ext, m in group.items() if f".{ext}" in IMAGE_SUFFIXES), None)
        if image is None:
            yield BadRow(where, f"no image member (have: {', '.join(sorted(group))})")
            continue
        if image.size == 0:
            yield BadRow(where, f"image member {image.name} is empty")
            continue
        row: object = {}
        if "json" in group:
            try:
                row = json.loads(texts[group["json"].name])
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                yield BadRow(where, f"{group['json'].name} is not valid JSON ({exc})")
                continue
        if "txt" in group and isinstance(row, dict):
            row = {"caption": texts[group["txt"].name].decode("utf-8", "replace"), **row}
        result = _samples_from_row(row, tasks, where, "", Path())
        if isinstance(result, BadRow):
            yield result
            continue
        member = TarMember(shard, image.offset_data, image.size)
        key = f"{shard.name}/{image.name}"
        for sample in result:
            yield replace(sample, key=key, image=member)


def read_sample_image(sample: Sample) -> np.ndarray:
    """The sample's image as H×W×3 uint8 (from a file, or by offset from a tar shard)."""
    if isinstance(sample.image, TarMember):
        member = sample.image
        with open(member.shard, "rb") as handle:
            handle.seek(member.offset)
            data = handle.read(member.size)
        if len(data) != member.size:
            raise BadImageError(f"cannot read image {sample.where}: the shard is truncated")
        return read_rgb(io.BytesIO(data), sample.where)
    return read_rgb(sample.image, sample.where)
