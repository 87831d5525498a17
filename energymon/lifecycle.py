"""Stopping on SIGTERM or SIGINT at any moment, start-up included.

The ``energymon`` command calls :func:`install` first thing, before it parses its arguments or imports any
stage. From then on SIGTERM and SIGINT only *request* a stop: a command still loading its plant file or
building its services finishes that step, sees :func:`stop_requested` and shuts down cleanly (exit 0, with
everything accepted kept), and a command that runs sets its stop event through :func:`on_stop`. A second
signal during shutdown changes nothing: shutdown already runs.

A signal that arrives while it is blocked (a supervisor that starts the process with SIGTERM blocked) is
delivered when :func:`install` unblocks it, so it is not lost either.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio  # imported where a loop runs: the light commands start without it

__all__ = ["asyncio_stop", "install", "on_stop", "restore_defaults", "stop_requested", "threading_stop"]

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_requested: list[int] = []
_listeners: list[Callable[[], None]] = []


def _handler(signum: int, frame: FrameType | None) -> None:
    _requested.append(signum)
    for listener in list(_listeners):
        listener()


def install() -> None:
    """Make SIGTERM and SIGINT request a stop (main thread only; elsewhere a no-op), and unblock them."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in _SIGNALS:
        signal.signal(sig, _handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)


def restore_defaults() -> None:
    """Give SIGTERM and SIGINT their default behaviour back (for commands that do not watch for a stop)."""
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def stop_requested() -> bool:
    """Whether SIGTERM or SIGINT arrived since :func:`install`."""
    return bool(_requested)


@contextlib.contextmanager
def on_stop(callback: Callable[[], None]) -> Iterator[None]:
    """Call ``callback`` on SIGTERM/SIGINT while the block runs (at once if one already arrived).

    The callback runs in the signal handler: it must only set a flag or hand over to a loop thread-safely.
    """
    _listeners.append(callback)
    try:
        if _requested:
            callback()
        yield
    finally:
        _listeners.remove(callback)


def asyncio_stop(stop: asyncio.Event) -> contextlib.AbstractContextManager[None]:
    """:func:`on_stop` that sets an asyncio event of the running loop (safely, from the handler)."""
    import asyncio

    loop = asyncio.get_running_loop()

    def wake() -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(stop.set)

    return on_stop(wake)


def threading_stop(stop: threading.Event) -> contextlib.AbstractContextManager[None]:
    """:func:`on_stop` that sets a threading event."""
    return on_stop(stop.set)
