"""Progress bars for long work (replay, audit), drawn only for a person at a terminal."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

Update = Callable[[int, int | None], None]


@contextlib.contextmanager
def progress_bar(label: str, *, total: int | None = None, enabled: bool = True) -> Iterator[Update]:
    """Yield ``update(done, total)``; a no-op when disabled or stderr is not a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield lambda _done, _total: None
        return
    with Progress(
        TextColumn(label),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda done, new_total: bar.update(task, completed=done, total=new_total or total)
