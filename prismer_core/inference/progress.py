"""A rich progress bar over images, handed to the predictor as a callback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@contextmanager
def progress_bar(description: str, total: int, console: Console | None = None, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """``with progress_bar("captioning", n) as advance: predictor.caption(..., progress=advance)``."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("left"), TimeRemainingColumn())
    console = console or Console(stderr=True)
    with Progress(*columns, console=console, disable=not (enabled and console.is_terminal), transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda done: progress.advance(task, done)
