"""`prismer label`: run experts over images and fill a label store, resumably.

The images come from the one reader (:func:`prismer_core.data.manifest.read_images`): a
folder, an image, a JSONL / COCO / VQAv2 / BLIP-style manifest or webdataset shards. Each is
stored under its content key, so the same file is labelled once however often (and under
whatever names) it is listed, and training finds its labels whatever path it is reached by.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
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


#: A process loads torch and its experts before its first image (seconds), about what a few
#: dozen images take: with fewer than this many images per process, the default starts fewer.
IMAGES_PER_STARTED_WORKER = 32


def default_workers(device: str = "cpu") -> int:
    """Labelling processes by default: one per CPU core this process may use; one on a GPU
    (every process would load its own copy of the models onto it)."""
    if device.startswith("cuda"):
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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
    workers: int | None = None,
    registry: Registry | None = None,
    show_progress: bool = True,
    console: Console | None = None,
) -> LabelReport:
    """Label every image of ``input_path`` with ``experts`` into the store at ``out``.

    Images whose files already exist (for every expert, and every preview when asked) are
    skipped, so an interrupted run finishes by running it again. A bad image stops the run
    with an error naming it, unless ``skip_bad_images`` is set. ``image_root``: where a
    manifest's images lie (default: beside it). ``workers``: processes, each labelling every
    n-th batch with its own experts and a share of the CPU threads [default: one per core on
    the CPU, at most one per ``IMAGES_PER_STARTED_WORKER`` images]; they write into the one store as shards do, each file atomically. A ``registry``
    other than the installed plugins cannot travel to other processes: with one, the work
    stays in this process.
    """
    import time

    if not experts:
        raise PrismerError("no experts given: pass --experts, for example --experts edge,ocr")
    if workers is not None and workers < 1:
        raise PrismerError(f"--workers must be at least 1, got {workers}")
    if workers is not None and workers > 1 and registry is not None:
        raise PrismerError("labelling in several processes loads the experts from the installed plugins; "
                           "with a registry of your own, use workers=1")
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
    if workers is None:  # by default a process has to have enough images to be worth starting
        workers = 1 if registry is not None else min(default_workers(device), len(sources) // IMAGES_PER_STARTED_WORKER or 1)
    processes = min(workers, -(-len(sources) // max(1, batch_size)))  # never more processes than batches
    console = console or Console(stderr=True)
    report = LabelReport()
    start = time.perf_counter()
    with make_progress(console, show_progress, "{task.fields[rate]}") as progress:
        task = progress.add_task("labelling" + (f" ({processes} processes)" if processes > 1 else ""),
                                 total=len(sources), rate="")

        def advance(images: int, labelled: int) -> None:
            report.labelled += labelled
            elapsed = time.perf_counter() - start
            progress.update(task, advance=images, rate=f"{report.labelled / elapsed:.2f} img/s" if elapsed else "")

        if processes > 1:
            job = _Job(str(input_path), tuple(experts), str(out), str(image_root) if image_root else None,
                       (index, count), batch_size, visualize, skip_bad_images, device,
                       {k: dict(v) for k, v in (settings or {}).items()})
            _label_in_processes(job, processes, report, advance, console)
        else:
            _label_sources(sources, runner, store, batch_size, visualize, skip_bad_images, report,
                           advance, lambda text: console.print(f"[yellow]skipped:[/yellow] {text}"))
    if report.skipped_done:
        console.print(f"{report.skipped_done} of {len(sources)} images were already labelled in {out}; skipped them")
    report.seconds = time.perf_counter() - start
    return report


def _label_sources(
    sources: Sequence[ImageRef],
    runner: ExpertRunner,
    store: LabelStore,
    batch_size: int,
    visualize: bool,
    skip_bad_images: bool,
    report: LabelReport,
    advance: Callable[[int, int], None],
    skipped: Callable[[str], None],
) -> None:
    """The labelling loop (one process's share): load, skip what is done, run, write."""

    def done(image: LoadedImage) -> bool:
        return all(
            store.has(name, image.key) and (not visualize or store.preview_path(name, image.key).exists())
            for name in runner.requested
        )

    # a kill between an image's label files and its index line leaves labels the index lacks:
    # a resumed run notes such images when it finds them done
    noted = set(store.images())
    for batch in _batches(sources, batch_size):
        todo = []
        for source in batch:
            try:
                image = source.load()
            except BadImageError as exc:
                if not skip_bad_images:
                    raise
                report.bad_images.append(str(exc))
                skipped(str(exc))
                continue
            queued = any(image.key == other.key for _, other in todo)
            if queued or done(image):
                report.skipped_done += 1
                if not queued and image.key not in noted:
                    store.note_image(image.key, image.where)
                    noted.add(image.key)
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
                noted.add(image.key)
        advance(len(batch), len(todo))


@dataclass(frozen=True)
class _Job:
    """What a labelling process needs to redo the parent's set-up (plain data: it is pickled)."""

    input_path: str
    experts: tuple[str, ...]
    out: str
    image_root: str | None
    shard: tuple[int, int]
    batch_size: int
    visualize: bool
    skip_bad_images: bool
    device: str
    settings: dict[str, dict[str, Any]]


def _label_in_processes(job: _Job, processes: int, report: LabelReport,
                        advance: Callable[[int, int], None], console: Console) -> None:
    """Start ``processes`` workers on interleaved batches, relay their progress, and stop them
    all at the first error (re-raised here with the worker's message)."""
    context = multiprocessing.get_context("spawn")  # no forked copies of loaded models or threads
    messages = context.Queue()
    threads = max(1, default_workers() // processes)
    workers = []
    with _environment(OMP_NUM_THREADS=str(threads)):  # read by torch and OpenMP as a worker starts
        for number in range(processes):
            worker = context.Process(target=_worker, args=(job, number, processes, threads, messages), daemon=True)
            worker.start()
            workers.append(worker)
    finished: set[int] = set()
    try:
        while len(finished) < processes:
            try:
                number, kind, payload = messages.get(timeout=0.5)
            except queue.Empty:
                for number, worker in enumerate(workers):
                    if number not in finished and not worker.is_alive() and messages.empty():
                        raise PrismerError(f"labelling process {number + 1} of {processes} died (exit code {worker.exitcode})")
                continue
            if kind == "advance":
                advance(*payload)
            elif kind == "skipped":
                console.print(f"[yellow]skipped:[/yellow] {payload}")
            elif kind == "done":
                finished.add(number)
                report.skipped_done += payload["skipped_done"]
                report.files_written += payload["files_written"]
                report.bad_images += payload["bad_images"]
            else:  # "error"
                raise PrismerError(payload)
    finally:
        for worker in workers:  # finished ones exit by themselves; the rest are stopped
            if worker.is_alive() and workers.index(worker) not in finished:
                worker.terminate()
        for worker in workers:
            worker.join()


def _worker(job: _Job, number: int, processes: int, threads: int, messages: Any) -> None:
    """One labelling process: every ``processes``-th batch of the parent's images, from ``number``."""
    import signal

    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stopped: unwind, so no temporary file stays
    torch.set_num_threads(threads)
    try:
        index, count = job.shard
        sources = read_images(job.input_path, job.image_root)[index::count]
        mine = [item for position, batch in enumerate(_batches(sources, job.batch_size))
                if position % processes == number for item in batch]
        runner = ExpertRunner(job.experts, device=job.device, settings=job.settings)
        report = LabelReport()
        parent = multiprocessing.parent_process()

        def advance(images: int, labelled: int) -> None:
            # A parent killed outright (SIGKILL, OOM) cannot stop its workers; they notice
            # here, between whole batches, so an orphan writes nothing more and leaves no .tmp.
            if parent is not None and not parent.is_alive():
                sys.exit(1)
            messages.put((number, "advance", (images, labelled)))

        _label_sources(mine, runner, LabelStore(job.out), job.batch_size, job.visualize, job.skip_bad_images, report,
                       advance, lambda text: messages.put((number, "skipped", text)))
        messages.put((number, "done", {"skipped_done": report.skipped_done, "files_written": report.files_written,
                                       "bad_images": report.bad_images}))
    except Exception as exc:  # the parent stops everything and says this one line
        messages.put((number, "error", str(exc) if isinstance(exc, PrismerError) else f"{type(exc).__name__}: {exc}"))


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _batches(items: Sequence[ImageRef], size: int) -> Iterator[list[ImageRef]]:
    size = max(1, size)
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
