"""Run callbacks at once when the server is told to stop (SIGTERM, SIGINT).

uvicorn waits for open responses before it stops (up to its graceful-shutdown timeout), and a
long poll or an event stream does not finish by itself. Whatever holds one registers how to end
it early:

    shutdown.on_exit_signal(broker.end_streams)     # SSE streams end, browsers reconnect
    shutdown.on_exit_signal(waker.end_polls)        # agents' command polls answer now

The handler uvicorn installed is chained: it still runs, after the callbacks were scheduled on
the event loop. Nothing is installed when no Python handler is in place (not under uvicorn's
signal capture) or outside the main thread; uvicorn restores the original handlers when it
stops serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable
from typing import Any

_MARK = "_cdrstats_callbacks"


def on_exit_signal(callback: Callable[[], None]) -> None:
    """Schedule `callback` on the running loop when SIGTERM or SIGINT arrives (idempotent)."""
    if threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        callbacks: list[Callable[[], None]] | None = getattr(previous, _MARK, None)
        if callbacks is not None:  # ours already: one more callback
            if callback not in callbacks:
                callbacks.append(callback)
            continue
        if not callable(previous) or previous is signal.default_int_handler:
            continue
        chained: list[Callable[[], None]] = [callback]

        def handler(
            signum: int,
            frame: Any,
            previous: Callable[[int, Any], Any] = previous,
            chained: list[Callable[[], None]] = chained,
        ) -> None:
            for cb in chained:
                with contextlib.suppress(RuntimeError):  # the loop may be closed already
                    loop.call_soon_threadsafe(cb)
            previous(signum, frame)

        setattr(handler, _MARK, chained)
        signal.signal(sig, handler)
