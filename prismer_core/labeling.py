"""`prismer label`: run experts over images and fill a label store, resumably.

The images come from the one reader (:func:`prismer_core.data.manifest.read_images`): a
folder, an image, a JSONL / COCO / VQAv2 / BLIP-style manifest or webdataset shards. Each is
stored under its content key, so the same file is labelled once however often (and under
whatever names) it is listed, and training finds its labels whatever path it is reached by.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from .data.images import BadImageError, ImageRef, LoadedImage
from .data.label_store import LabelStore
from .data.manifest import read_images
from .data.preview import write_preview
from .errors import PrismerError
from .runner import ExpertRunner
from .progress import make_progress
from .registry import Registry


@dataclass
class LabelReport:
    """What a labelling run did."""

    labelled: int = 0
    skipped_done: int = 0
    bad_images: list[str] = field(default_factory=list)
    files_written: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.labelled / self.seconds if self.seconds else 0.0


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n; None -> (0, 1)."""
    if not text:
        return 0, 1
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise PrismerError(f"--shard must look like i/n (for example 0/4), got {text!r}") from None
    if not 0 <= index < count:
        raise PrismerError(f"--shard {text}: need 0 <= i < n")
    return index, count


def label_images(
    input_path: str | Path,
    experts: Sequence[str],
    out: str | Path,
    *,
    batch_size: int = 4,
    visualize: bool = False,
    shard: str | None = None,
    skip_bad_images: bool = False,
    device: str = "cpu",
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    image_root: str | Path | None = None,
    registry: Registry | None = None,
    show_progress: bool = True,
    console: Console | None = None,
) -> LabelReport:
    """Label every image of ``input_path`` with ``experts`` into the store at ``out``.

    Images whose files already exist (for every expert, and every preview when asked) are
    skipped, so an interrupted run finishes by running it again. A bad image stops the run
    with an error naming it, unless ``skip_bad_images`` is set. ``image_root``: where a
    manifest's images lie (default: beside it).
    """
    import time

    if not experts:
        raise PrismerError("no experts given: pass --experts, for example --experts edge,ocr")
    sources = read_images(input_path, image_root)
    index, count = parse_shard(shard)
    sources = sources[index::count]
    runner = ExpertRunner(experts, registry=registry, device=device, settings=settings)
    store = LabelStore(out)
    plugins = {name: runner.registry.experts[name].plugin.package for name in runner.requested}
    store.open_for(
        {name: runner.experts[name].spec for name in runner.requested},
        plugins,
        {name: runner.experts[name].settings for name in runner.requested},
    )

    def done(image: LoadedImage) -> bool:
        return all(
            store.has(name, image.key) and (not visualize or store.preview_path(name, image.key).exists())
            for name in runner.requested
        )

    report = LabelReport()
    console = console or Console(stderr=True)
    start = time.perf_counter()
    with make_progress(console, show_progress, "{task.fields[rate]}") as progress:
        task = progress.add_task("labelling", total=len(sources), rate="")
        for batch in _batches(sources, batch_size):
            todo = []
            for source in batch:
                try:
                    image = source.load()
                except BadImageError as exc:
                    if not skip_bad_images:
                        raise
                    report.bad_images.append(str(exc))
                    console.print(f"[yellow]skipped:[/yellow] {exc}")
                    continue
                if done(image) or any(image.key == other.key for _, other in todo):
                    report.skipped_done += 1
                else:
                    todo.append((source, image))
            if todo:
                outputs = runner([image.pixels for _, image in todo], [image.where for _, image in todo])
                for position, (source, image) in enumerate(todo):
                    for name in runner.requested:
                        output = outputs[name][position]
                        store.write(name, image.key, output)
                        report.files_written += 1
                        if visualize:
                            title = f"{name}: {source.name or image.where}"  # as `prismer serve` titles its panels
                            write_preview(store.preview_path(name, image.key), image.pixels, output, title)
                            report.files_written += 1
                    store.note_image(image.key, image.where)
                report.labelled += len(todo)
            elapsed = time.perf_counter() - start
            progress.update(task, advance=len(batch), rate=f"{report.labelled / elapsed:.2f} img/s" if elapsed else "")
    if report.skipped_done:
        console.print(f"{report.skipped_done} of {len(sources)} images were already labelled in {out}; skipped them")
    report.seconds = time.perf_counter() - start
    return report


def _batches(items: Sequence[ImageRef], size: int) -> Iterator[list[ImageRef]]:
    size = max(1, size)
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
