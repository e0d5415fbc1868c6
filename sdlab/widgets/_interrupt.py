"""Kernel > Interrupt stops a widget's run.

A widget runs its work on a thread, so that Cancel and other cells stay live. Jupyter's Kernel >
Interrupt sends SIGINT to the kernel (ipykernel's default "signal" interrupt mode), and Python
delivers a signal to the main thread only: without help it would never reach the run. `install()`
(main thread only, where `signal.signal` works) puts a chaining handler in front of whatever SIGINT
handler is there: it sets the cancel event of every run `watch`ed at that moment, then calls the
previous handler (a running cell still gets its KeyboardInterrupt).

ipykernel ignores SIGINT while idle and swaps in `default_int_handler` around each message it
handles, restoring its saved handler afterwards; `install()` therefore also chains the handler it
saved and wraps its `pre_handler_hook`, so the chain stays in place idle and busy alike.
"""

from __future__ import annotations

import signal
import threading

_RUNS: set[threading.Event] = set()  # the cancel events of the runs in progress
_GUARD = threading.Lock()


def watch(event: threading.Event) -> None:
    """Let the next SIGINT set `event` (a run's cancel event), until `unwatch(event)`."""
    with _GUARD:
        _RUNS.add(event)


def unwatch(event: threading.Event) -> None:
    with _GUARD:
        _RUNS.discard(event)


def cancel_all() -> int:
    """Set the cancel event of every watched run; returns how many there were."""
    with _GUARD:
        events = list(_RUNS)
    for event in events:
        event.set()
    return len(events)


class _Chain:
    """A SIGINT handler: cancel every watched run, then do what the previous handler did."""

    def __init__(self, previous):
        self.previous = previous

    def __call__(self, signum, frame):
        cancel_all()
        previous = self.previous
        if previous is signal.SIG_IGN:
            return
        if callable(previous):
            previous(signum, frame)
        else:  # SIG_DFL or a handler installed outside Python: Python's own behaviour
            signal.default_int_handler(signum, frame)


def _chained(handler):
    return handler if isinstance(handler, _Chain) else _Chain(handler)


def install() -> bool:
    """Chain sdlab's SIGINT handler (idempotent). Only the main thread can; returns whether it did."""
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGINT, _chained(signal.getsignal(signal.SIGINT)))
    kernel = _kernel()
    if kernel is not None:
        if hasattr(kernel, "saved_sigint_handler"):  # restored when the current message is handled
            kernel.saved_sigint_handler = _chained(kernel.saved_sigint_handler)
        hook = getattr(kernel, "pre_handler_hook", None)
        if hook is not None and not getattr(hook, "sdlab_chained", False):

            def pre_handler_hook():  # ipykernel installs default_int_handler per message: chain it
                hook()
                signal.signal(signal.SIGINT, _chained(signal.getsignal(signal.SIGINT)))

            pre_handler_hook.sdlab_chained = True
            kernel.pre_handler_hook = pre_handler_hook
    return True


def _kernel():
    """The running ipykernel, or None outside one."""
    import sys

    if "IPython" not in sys.modules:
        return None
    from IPython import get_ipython

    return getattr(get_ipython(), "kernel", None)
