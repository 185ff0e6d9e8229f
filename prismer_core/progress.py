"""The progress bars of long work (labelling, training, inference), made in one place."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def make_progress(console: Console, enabled: bool = True, *fields: str, transient: bool = False) -> Progress:
    """A bar with done/total, elapsed and remaining time; ``fields`` are extra text columns
    such as ``"loss {task.fields[loss]}"`` (give their values in ``add_task``/``update``)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *(TextColumn(text) for text in fields),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
        transient=transient,
    )


@contextmanager
def progress_bar(description: str, total: int, console: Console | None = None, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """``with progress_bar("captioning", n) as advance: predictor.caption(..., progress=advance)``;
    shown only on a terminal, and gone when done."""
    console = console or Console(stderr=True)
    with make_progress(console, enabled and console.is_terminal, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda done: progress.advance(task, done)
