"""Progress bars for the long steps of a run (training, calibration, speedup, search), on stderr, through rich.

``Progress(quiet=True)`` shows nothing; the run logs the same steps at INFO level (logger ``nnic.recipe``)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from typing import Any

log = logging.getLogger("nnic.recipe")


class Progress:
    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self._bars: Any = None

    def __enter__(self) -> Progress:
        if not self.quiet:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )
            from rich.progress import Progress as Bars

            self._bars = Bars(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                              TimeElapsedColumn(), console=Console(stderr=True))
            self._bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bars is not None:
            self._bars.stop()
            self._bars = None

    @contextlib.contextmanager
    def step(self, description: str) -> Iterator[None]:
        """A step without a count (speedup of a large model, saving): a spinner and the elapsed time."""
        log.info("%s ...", description)
        task = self._bars.add_task(description, total=None) if self._bars is not None else None
        try:
            yield
        finally:
            if task is not None:
                self._bars.update(task, total=1, completed=1)

    def track(self, iterable: Iterable[Any], description: str, total: int | None = None) -> Iterator[Any]:
        """Iterate ``iterable``, advancing a bar (its length is used as the total when it has one)."""
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        log.info("%s (%s items)", description, total if total is not None else "?")
        if self._bars is None:
            yield from iterable
            return
        task = self._bars.add_task(description, total=total)
        for item in iterable:
            yield item
            self._bars.advance(task)
        self._bars.update(task, total=self._bars.tasks[task].completed)


class Tracked:
    """An iterable that shows a bar each time it is iterated (a training set seen once per epoch)."""

    def __init__(self, iterable: Iterable[Any], progress: Progress, description: str) -> None:
        self.iterable, self.progress, self.description = iterable, progress, description
        self.passes = 0

    def __iter__(self) -> Iterator[Any]:
        self.passes += 1
        return self.progress.track(self.iterable, f"{self.description} (pass {self.passes})")

    def __len__(self) -> int:
        return len(self.iterable)  # type: ignore[arg-type]
