"""Progress bars for loops over videos (rich), quiet when output is not a terminal."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield `advance(n=1)`; the bar is drawn on stderr, kept on success and erased on failure."""
    if not enabled:
        yield lambda n=1: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    from rich.console import Console

    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(description, total=total)
        try:
            yield lambda n=1: progress.advance(task, n)
        except BaseException:
            # The failure is reported in one line of its own; a half-drawn bar above it
            # only reads as part of the error, so it is erased.
            progress.update(task, visible=False)
            raise
