"""A widget's run: on a thread, one at a time, stopped by Cancel or Kernel > Interrupt, and
waiting its turn on the pipeline.

    run = WidgetRun("sdlab-promptlab")
    run.start(work)                       # from a button; False if a run is still going
    with run.pipeline_turn(backend, on_wait=show_waiting):
        ...                               # every call of the run, no cell in between
    run.check()                           # in a progress callback: raises Interrupted once cancelled

The pipeline's lock (`sdlab.backends.pipeline_lock`) is reentrant: the run's own calls pass
straight through it, while a cell using the same pipeline waits for the run to end, and a run
started while a cell holds the pipeline waits for the cell (calling `on_wait` once, so the widget
says so instead of looking frozen; Cancel stops the wait too).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from ..backends import pipeline_lock
from ..executors import Interrupted
from . import _interrupt

# How often a run waiting for the pipeline looks at its cancel event (seconds).
_POLL = 0.1


class WidgetRun:
    """The thread and cancel event of a widget's work."""

    def __init__(self, name: str):
        self.name = name
        self.thread: threading.Thread | None = None
        self.cancel_event = threading.Event()

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self, work: Callable[[], Any]) -> bool:
        """Run `work` on a new thread; False (nothing started) while the last run is going."""
        if self.running:
            return False
        self.cancel_event.clear()
        _interrupt.install()  # a no-op off the main thread; the button handlers run on it
        _interrupt.watch(self.cancel_event)

        def body() -> None:
            try:
                work()
            finally:
                _interrupt.unwatch(self.cancel_event)

        self.thread = threading.Thread(target=body, name=self.name, daemon=True)
        self.thread.start()
        return True

    def wait(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def cancel(self) -> None:
        self.cancel_event.set()

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def check(self, what: str = "the run") -> None:
        """Raise `Interrupted` once the run was cancelled (call it between denoising steps)."""
        if self.cancel_event.is_set():
            raise Interrupted(f"{what} was cancelled")

    @contextlib.contextmanager
    def pipeline_turn(self, backend: Any, *, on_wait: Callable[[], None]) -> Iterator[None]:
        """Hold `backend`'s pipeline for the whole block; if a cell (or another widget) holds it,
        call `on_wait` and wait, stopping with `Interrupted` if the run is cancelled meanwhile."""
        lock = pipeline_lock(backend)
        if lock is None:  # a remote backend queues its own jobs
            yield
            return
        if not lock.acquire(blocking=False):
            on_wait()
            while not lock.acquire(timeout=_POLL):
                self.check("waiting for the pipeline")
        try:
            yield
        finally:
            lock.release()
