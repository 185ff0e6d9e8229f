"""The one reader of data as users have it, used by `label`, `train`, `eval` and `data check`.

Every format becomes rows (an image plus the fields that describe it); rows become
:class:`Sample` objects (one per row and task), image lists (:func:`read_images`) or
classification rows (:func:`read_classification_rows`). A row that cannot be used (bad JSON,
a missing key, a missing or empty image file) is a :class:`BadRow` naming its ``file:line``;
the caller decides whether it stops the run or is skipped and counted (``on_bad_row``).
Images are decoded later, by the data loader, which reports an undecodable image the same way.

Formats:

* a folder of images (recursively), or one image: rows with no text, for ``prismer label``;
* JSONL, one object per line: ``{"image": "img/1.png", "caption": "..."}`` or
  ``{"image": ..., "question": "...", "answer": "red"}`` (``answer``/``answers``: a string or a
  list of reference answers; an optional ``type``, such as "colour", scores each kind of
  question apart), or ``{"image": ..., "label": "cat"}`` for classification. One file may mix
  kinds of rows. Paths are relative to the manifest (or ``image_root``);
* BLIP-style JSON lists: ``[{"image": ..., "caption": "..." or [...]}, {"image": ...,
  "question": ..., "answer": [...]}]``, paths relative to ``image_root`` (default: the JSON's folder);
* COCO captions JSON (``{"images": [{"id", "file_name"}], "annotations": [{"image_id",
  "caption"}]}``): one caption row per annotation;
* VQAv2 questions JSON (``{"data_subtype": "val2014", "questions": [{"image_id", "question",
  "question_id"}]}``) with its annotations file beside it (``v2_OpenEnded_mscoco_val2014_questions.json``
  pairs with ``v2_mscoco_val2014_annotations.json``: ``answers``, ``question_type``); images
  are ``IMAGE_ROOT/val2014/COCO_val2014_<id:012>.jpg`` (or without the subfolder);
* webdataset tar shards (a ``.tar`` file, or a folder of them): members sharing a key form one
  row, read with the ``webdataset`` library: an image (``.jpg``/``.png``/``.webp``…) plus
  ``.txt`` (caption) and/or ``.json`` (the fields above). Images are read back by byte offset.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import PrismerError
from ..text import TRAIN_TASKS
from .images import IMAGE_SUFFIXES, BadImageError, BadInputError, ImageFile, ImageRef, TarMember

BAD_ROW_POLICIES = ("skip", "stop")


class BadRowError(PrismerError):
    """A manifest row that cannot be used, raised when ``on_bad_row='stop'``."""


class ManifestError(PrismerError):
    """A manifest that cannot be used at all (missing, empty, unknown format)."""


@dataclass(frozen=True)
class Sample:
    """One example: an image and the text to learn (or score) for one task."""

    image: ImageRef
    where: str  # file:line (or shard:member) for messages
    task: str  # caption | vqa | classify
    caption: str = ""
    question: str = ""
    answers: tuple[str, ...] = ()
    #: optional kind of question (the row's ``type`` or ``question_type``), for per-kind scores
    question_type: str = ""
    label: str = ""  # classify: the class name

    @property
    def name(self) -> str:
        """The image's name in reports: its path relative to the manifest, or shard/member."""
        return self.image.name


@dataclass(frozen=True)
class BadRow:
    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass(frozen=True)
class Row:
    """One row of any format: its image, the fields describing it, where it stands."""

    image: ImageRef
    fields: dict
    where: str


@dataclass
class SampleSet:
    """The samples read from one or more manifests, and the rows that were skipped."""

    samples: list[Sample] = field(default_factory=list)
    bad_rows: list[BadRow] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def extend(self, other: "SampleSet") -> None:
        self.samples.extend(other.samples)
        self.bad_rows.extend(other.bad_rows)
        self.sources.extend(other.sources)

    def count(self, task: str) -> int:
        return sum(1 for s in self.samples if s.task == task)


def parse_tasks(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"caption,vqa"`` -> ``("caption", "vqa")``, refusing unknown task names."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    tasks = tuple(dict.fromkeys(p.strip() for p in parts if p.strip()))
    unknown = [t for t in tasks if t not in TRAIN_TASKS]
    if unknown or not tasks:
        raise PrismerError(f"--task must be one or more of {', '.join(TRAIN_TASKS)} (comma-separated), got {text!r}")
    return tasks


def load_data(
    paths: str | Path | Iterable[str | Path],
    tasks: Sequence[str] = ("caption",),
    on_bad_row: str = "stop",
    image_root: str | Path | None = None,
) -> SampleSet:
    """Read every manifest in ``paths`` into samples for ``tasks``.

    With ``on_bad_row='stop'`` the first bad row raises :class:`BadRowError` naming its
    ``file:line``; with ``'skip'`` bad rows are collected in ``SampleSet.bad_rows``.
    """
    if on_bad_row not in BAD_ROW_POLICIES:
        raise PrismerError(f"--on-bad-row must be one of {', '.join(BAD_ROW_POLICIES)}, got {on_bad_row!r}")
    if isinstance(paths, (str, Path)):
        paths = [paths]
    data = SampleSet()
    for path in map(Path, paths):
        part = SampleSet(sources=[str(path)])
        for item in rows(path, image_root, wanted=tasks):
            result = _samples_from_row(item, tasks) if isinstance(item, Row) else item
            if isinstance(result, BadRow):
                if on_bad_row == "stop":
                    raise BadRowError(f"{result} (pass --on-bad-row skip to skip bad rows)")
                part.bad_rows.append(result)
            else:
                part.samples.extend(result)
        if not part.samples:
            problem = f"; {len(part.bad_rows)} bad rows, the first: {part.bad_rows[0]}" if part.bad_rows else ""
            raise ManifestError(f"{path} holds no usable {'/'.join(tasks)} samples{problem}")
        data.extend(part)
    if not data.sources:
        raise ManifestError("no training data given (pass --data MANIFEST)")
    return data


def check_data(
    paths: str | Path | Iterable[str | Path], tasks: Sequence[str], decode: bool = True, image_root: str | Path | None = None
) -> tuple[SampleSet, list[str]]:
    """The usable samples and every problem, as `prismer data check` reports them: bad rows,
    and with ``decode`` every image that does not decode (each image once)."""
    data = load_data(paths, tasks, on_bad_row="skip", image_root=image_root)
    problems = [str(row) for row in data.bad_rows]
    if decode:
        seen: set[str] = set()
        for sample in data.samples:
            if sample.image.source in seen:
                continue
            seen.add(sample.image.source)
            try:
                sample.image.load()
            except BadImageError as exc:
                problems.append(str(exc))  # names file:line
    return data, problems


def read_images(path: str | Path, image_root: str | Path | None = None) -> list[ImageRef]:
    """The distinct images of any input (a folder, an image, any manifest format), in order;
    the first bad row stops with its ``file:line``."""
    images: dict[str, ImageRef] = {}
    for item in rows(Path(path), image_root):
        if isinstance(item, BadRow):
            raise BadInputError(str(item))
        images.setdefault(item.image.source, item.image)
    if not images:
        raise BadInputError(f"{path} lists no images")
    return list(images.values())


def read_classification_rows(path: str | Path, image_root: str | Path | None = None) -> list[Sample]:
    """Rows ``{"image": "img/1.png", "label": "cat"}`` (any format); a bad row stops the run."""
    samples = []
    for item in rows(Path(path), image_root):
        if isinstance(item, BadRow):
            raise BadRowError(str(item))
        label = item.fields.get("label")
        if not (isinstance(label, str) and label.strip()):
            raise BadRowError(f"{item.where}: a classification row needs 'image' (a path) and 'label' (a class name)")
        samples.append(Sample(item.image, item.where, "classify", label=label.strip()))
    if not samples:
        raise ManifestError(f"{path} holds no classification rows")
    return samples


# -- rows -> samples -----------------------------------------------------------------------
#: The key that marks a row as meant for a task.
TASK_KEYS = {"caption": "caption", "vqa": "question"}


def _samples_from_row(row: Row, tasks: Sequence[str]) -> list[Sample] | BadRow:
    """The samples a row gives for ``tasks``, or why it is bad.

    A row may serve several tasks. A row meant only for a task not asked for (a caption row
    in a ``--task vqa`` run over a mixed manifest) gives no samples and is not bad; a row
    with a malformed value, or with no task key at all, is bad.
    """
    fields, where = row.fields, row.where
    samples: list[Sample] = []
    problems: list[str] = []
    if "caption" in tasks and "caption" in fields:
        captions = fields["caption"] if isinstance(fields["caption"], list) else [fields["caption"]]
        if captions and all(isinstance(c, str) and c.strip() for c in captions):
            samples += [Sample(row.image, where, "caption", caption=c.strip()) for c in captions]
        else:
            problems.append("'caption' must be a non-empty string (or a list of them)")
    if "vqa" in tasks and "question" in fields:
        question, answers = fields["question"], _answers(fields)
        if not (isinstance(question, str) and question.strip()):
            problems.append("'question' must be a non-empty string")
        elif isinstance(answers, str):
            problems.append(answers)
        else:
            kind = fields.get("type", fields.get("question_type", ""))
            samples.append(Sample(row.image, where, "vqa", question=question.strip(), answers=answers,
                                  question_type=kind.strip() if isinstance(kind, str) else ""))
    if problems:
        return BadRow(where, "; ".join(problems))
    if samples or any(key in fields for key in TASK_KEYS.values()):
        return samples
    wanted = " or ".join(f"'{TASK_KEYS[t]}'" for t in tasks)
    return BadRow(where, f"missing key {wanted}")


def _answers(fields: dict) -> tuple[str, ...] | str:
    """The reference answers of a row, or why there are none."""
    key = "answers" if "answers" in fields else "answer"
    if key not in fields:
        return "missing key 'answer'"
    value = fields[key]
    values = [value] if isinstance(value, str) else value
    if isinstance(values, list):  # VQAv2 annotations: [{"answer": "red", ...}, ...]
        values = [v.get("answer") if isinstance(v, dict) else v for v in values]
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v.strip() for v in values):
        return f"'{key}' must be a non-empty string or a list of them"
    return tuple(v.strip() for v in values)


# -- formats -> rows -----------------------------------------------------------------------
def rows(path: Path, image_root: str | Path | None = None, wanted: Sequence[str] = ()) -> Iterator[Row | BadRow]:
    """Every row of ``path`` in whatever format it is; ``wanted``: the tasks the caller reads
    (a VQAv2 questions file needs its annotations only for VQA)."""
    root = Path(image_root) if image_root else None
    if not path.exists():
        raise ManifestError(f"data not found: {path}")
    if path.is_dir():
        shards = sorted(path.glob("*.tar"))
        yield from (_tar_rows(shards) if shards else _folder_rows(path))
        return
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        yield Row(ImageFile(path, path.name, str(path)), {}, str(path))
        return
    if path.stat().st_size == 0:
        raise ManifestError(f"manifest {path} is an empty file")
    if suffix == ".jsonl":
        yield from _jsonl_rows(path, root or path.parent)
    elif suffix == ".json":
        yield from _json_rows(path, root or path.parent, wanted)
    elif suffix == ".tar":
        yield from _tar_rows([path])
    else:
        raise ManifestError(
            f"{path}: unknown manifest format (expected a folder of images or .tar shards, an image, .jsonl, "
            "COCO/VQAv2/BLIP-style .json or .tar)"
        )


def _folder_rows(folder: Path) -> Iterator[Row]:
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )
    if not files:
        raise ManifestError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) or .tar shards found in folder {folder}")
    for file in files:
        yield Row(ImageFile(file, file.relative_to(folder).as_posix(), str(file)), {}, str(file))


def _file_row(fields: object, where: str, root: Path, image: object) -> Row | BadRow:
    """A row whose image is a file named by ``image`` (relative to ``root``), checked to exist."""
    if not isinstance(fields, dict):
        return BadRow(where, f"expected a JSON object, got {type(fields).__name__}")
    if not (isinstance(image, str) and image):
        return BadRow(where, "missing key 'image'" if image is None else "'image' must be a path")
    relative = Path(image)
    full = relative if relative.is_absolute() else root / relative
    try:
        size = full.stat().st_size
    except FileNotFoundError:
        return BadRow(where, f"image not found: {full}")
    except OSError as exc:
        return BadRow(where, f"image {full} cannot be read: {exc.strerror}")
    if size == 0:
        return BadRow(where, f"image file {full} is empty")
    name = relative.as_posix() if not relative.is_absolute() else full.as_posix()
    return Row(ImageFile(full, name, where), fields, where)


def _jsonl_rows(path: Path, root: Path) -> Iterator[Row | BadRow]:
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                fields = json.loads(line)
            except json.JSONDecodeError as exc:
                yield BadRow(where, f"not valid JSON ({exc.msg})")
                continue
            yield _file_row(fields, where, root, fields.get("image") if isinstance(fields, dict) else "")


def _json_rows(path: Path, root: Path, wanted: Sequence[str]) -> Iterator[Row | BadRow]:
    document = _read_json(path)
    if isinstance(document, list):  # BLIP-style: a list of rows
        for index, fields in enumerate(document):
            yield _file_row(fields, f"{path}:[{index}]", root, fields.get("image") if isinstance(fields, dict) else "")
    elif isinstance(document, dict) and isinstance(document.get("questions"), list):
        yield from _vqav2_rows(path, document, root, wanted)
    elif isinstance(document, dict) and isinstance(document.get("images"), list) and isinstance(document.get("annotations"), list):
        yield from _coco_rows(path, document, root)
    else:
        raise ManifestError(
            f"{path}: not a format this reader knows: expected a JSON list of rows (BLIP-style), COCO captions "
            "('images' and 'annotations' lists) or VQAv2 questions ('questions' list)"
        )


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: not a readable JSON file ({exc})") from None


def _coco_rows(path: Path, document: dict, root: Path) -> Iterator[Row | BadRow]:
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
        yield _file_row({"caption": annotation.get("caption")}, where, root, name)


def vqav2_annotations_path(questions: Path) -> Path:
    """The annotations file VQAv2 names beside a questions file."""
    name = questions.name.replace("_questions", "_annotations")
    for prefix in ("OpenEnded_", "MultipleChoice_"):
        name = name.replace(prefix, "")
    return questions.with_name(name)


def _vqav2_rows(path: Path, document: dict, root: Path, wanted: Sequence[str]) -> Iterator[Row | BadRow]:
    subtype = str(document.get("data_subtype") or "")
    answers: dict[object, dict] = {}
    if "vqa" in wanted:
        annotations_file = vqav2_annotations_path(path)
        if not annotations_file.is_file():
            raise ManifestError(f"{path}: VQAv2 questions need their answers in {annotations_file.name} beside them (not found)")
        annotations = _read_json(annotations_file)
        if not isinstance(annotations, dict) or not isinstance(annotations.get("annotations"), list):
            raise ManifestError(f"{annotations_file}: a VQAv2 annotations file needs an 'annotations' list")
        answers = {a.get("question_id"): a for a in annotations["annotations"] if isinstance(a, dict)}
    for index, question in enumerate(document["questions"]):
        where = f"{path}:questions[{index}]"
        if not isinstance(question, dict) or "image_id" not in question:
            yield BadRow(where, "a question needs 'image_id', 'question' and 'question_id'")
            continue
        fields = {"question": question.get("question")}
        if "vqa" in wanted:
            annotation = answers.get(question.get("question_id"))
            if annotation is None:
                yield BadRow(where, f"question_id {question.get('question_id')!r} has no annotation")
                continue
            fields.update(answers=annotation.get("answers"), question_type=annotation.get("question_type", ""))
        file = f"COCO_{subtype}_{int(question['image_id']):012d}.jpg"
        image = f"{subtype}/{file}" if subtype and (root / subtype / file).exists() else file
        yield _file_row(fields, where, root, image)


def _tar_rows(shards: Sequence[Path]) -> Iterator[Row | BadRow]:
    for shard in shards:
        yield from _shard_rows(shard)


def _shard_rows(shard: Path) -> Iterator[Row | BadRow]:
    """The samples of one webdataset shard, grouped by webdataset's own rule (consecutive
    members sharing the part of their name before the first dot); images keep their offsets."""
    from webdataset.tariterators import group_by_keys

    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    try:
        with tarfile.open(shard, "r:") as archive:
            files = ({"fname": m.name, "data": m, "__url__": str(shard)} for m in archive.getmembers() if m.isfile())
            for sample in group_by_keys(files):
                groups[sample["__key__"]] = {ext: m for ext, m in sample.items() if not ext.startswith("__")}
            texts = {
                member.name: archive.extractfile(member).read()  # type: ignore[union-attr]
                for group in groups.values() for ext, member in group.items() if ext in ("txt", "json")
            }
    except (tarfile.TarError, OSError, ValueError) as exc:
        yield BadRow(str(shard), f"not a readable tar shard ({exc.args[0] if exc.args else exc})")
        return
    for key, group in groups.items():
        where = f"{shard}:{key}"
        image = next((m for ext, m in group.items() if f".{ext}" in IMAGE_SUFFIXES), None)
        if image is None:
            yield BadRow(where, f"no image member (have: {', '.join(sorted(group))})")
            continue
        if image.size == 0:
            yield BadRow(where, f"image member {image.name} is empty")
            continue
        fields: object = {}
        if "json" in group:
            try:
                fields = json.loads(texts[group["json"].name])
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                yield BadRow(where, f"{group['json'].name} is not valid JSON ({exc})")
                continue
        if not isinstance(fields, dict):
            yield BadRow(where, f"expected a JSON object, got {type(fields).__name__}")
            continue
        if "txt" in group:
            fields = {"caption": texts[group["txt"].name].decode("utf-8", "replace"), **fields}
        name = f"{shard.name}/{PurePosixPath(image.name)}"
        yield Row(TarMember(shard, image.offset_data, image.size, name, where), fields, where)
