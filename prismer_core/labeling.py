"""`prismer label`: run experts over a folder or manifest and fill a label store, resumably."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .data.images import BadImageError, ImageSource, list_images, read_rgb
from .data.label_store import LabelStore
from .data.preview import write_preview
from .errors import PrismerError
from .experts.runner import ExpertRunner
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
    registry: Registry | None = None,
    show_progress: bool = True,
    console: Console | None = None,
) -> LabelReport:
    """Label every image of ``input_path`` with ``experts`` into the store at ``out``.

    Images whose files already exist (for every expert, and every preview when asked) are
    skipped, so an interrupted run finishes by running it again. A bad image stops the run
    with an error naming it, unless ``skip_bad_images`` is set.
    """
    import time

    if not experts:
        raise PrismerError("no experts given: pass --experts, for example --experts edge,ocr")
    sources = list_images(input_path)
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

    def done(source: ImageSource) -> bool:
        return all(
            store.has(name, source.key) and (not visualize or store.preview_path(name, source.key).exists())
            for name in runner.requested
        )

    todo = [s for s in sources if not done(s)]
    report = LabelReport(skipped_done=len(sources) - len(todo))
    console = console or Console(stderr=True)
    if report.skipped_done:
        console.print(f"{report.skipped_done} of {len(sources)} images already labelled in {out}; skipping them")
    start = time.perf_counter()
    with _progress(console, show_progress) as progress:
        task = progress.add_task("labelling", total=len(todo), rate="")
        for batch in _batches(todo, batch_size):
            images, ready = [], []
            for source in batch:
                try:
                    images.append(read_rgb(source.path, source.where))
                    ready.append(source)
                except BadImageError as exc:
                    if not skip_bad_images:
                        raise
                    report.bad_images.append(str(exc))
                    console.print(f"[yellow]skipped:[/yellow] {exc}")
            if ready:
                outputs = runner(images, [s.label for s in ready])
                for position, source in enumerate(ready):
                    for name in runner.requested:
                        output = outputs[name][position]
                        store.write(name, source.key, output)
                        report.files_written += 1
                        if visualize:
                            write_preview(store.preview_path(name, source.key), images[position], output, f"{name}: {source.key}")
                            report.files_written += 1
                report.labelled += len(ready)
            elapsed = time.perf_counter() - start
            progress.update(task, advance=len(batch), rate=f"{report.labelled / elapsed:.2f} img/s" if elapsed else "")
    report.seconds = time.perf_counter() - start
    return report


def _batches(items: Sequence[ImageSource], size: int) -> Iterator[list[ImageSource]]:
    size = max(1, size)
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _progress(console: Console, enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
        transient=False,
    )
