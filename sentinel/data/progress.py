"""The progress display of ``sentinel data fetch`` (rich): totals, sizes and ETA."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console, Group
from rich.live import Live
from rich.progress import (BarColumn, DownloadColumn, Progress, TaskID, TaskProgressColumn, TextColumn,
                           TimeRemainingColumn, TransferSpeedColumn)


class FetchProgress:
    """One line per symbol (files or time covered, with ETA) and one per download in flight (bytes, speed, ETA)."""

    def __init__(self, console: Console | None = None, enabled: bool = True) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = enabled and self.console.is_terminal  # no bars in a log file or a pipe
        enabled = self.enabled
        self._items = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                               TimeRemainingColumn(), console=self.console, disable=not enabled, transient=False)
        self._bytes = Progress(TextColumn("  {task.description}"), BarColumn(), DownloadColumn(),
                               TransferSpeedColumn(), TimeRemainingColumn(), console=self.console,
                               disable=not enabled, transient=True)
        self._live_group: Live | None = None

    def __enter__(self) -> FetchProgress:
        if self.enabled:
            self._live_group = Live(Group(self._items, self._bytes), console=self.console, refresh_per_second=8)
            self._live_group.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._live_group is not None:
            self._live_group.__exit__(exc_type, exc, tb)

    def item_task(self, description: str, total: float | None) -> TaskID:
        """An overall line (files of a symbol, or milliseconds of history covered)."""
        return self._items.add_task(description, total=total)

    def advance(self, task: TaskID, amount: float = 1) -> None:
        self._items.advance(task, amount)

    def set_completed(self, task: TaskID, completed: float, description: str | None = None) -> None:
        fields = {"description": description} if description else {}
        self._items.update(task, completed=completed, **fields)

    def download(self, name: str) -> Download:
        return Download(self._bytes, name)

    def print(self, text: str) -> None:
        self.console.print(text, highlight=False)


class Download:
    """Callbacks for one file's transfer."""

    def __init__(self, progress: Progress, name: str) -> None:
        self.progress = progress
        self.task = progress.add_task(name, total=None)
        self.received = 0

    def on_size(self, already: int, total: int | None) -> None:
        self.progress.update(self.task, completed=already, total=total)

    def on_bytes(self, n: int) -> None:
        self.received += n
        self.progress.advance(self.task, n)

    def done(self) -> None:
        self.progress.remove_task(self.task)
