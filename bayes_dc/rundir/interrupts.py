"""What Ctrl-C (or a scheduler's SIGTERM) does to a run: the first one asks it to stop at the next safe point (after
an epoch's checkpoint), a second one stops it at once. :func:`graceful_interrupt` turns the signal into a flag the
round loop reads (``bayes_dc.loop.pipeline.run``)."""
from __future__ import annotations

import dataclasses
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator


@dataclasses.dataclass
class InterruptFlag:
    """Set by :func:`graceful_interrupt` when a stop was asked for; the loop reads ``requested``."""

    requested: bool = False
    signal_name: str | None = None
    at: float | None = None     # the clock's time (time.monotonic()) of the first signal


@contextmanager
def graceful_interrupt(signals: tuple[int, ...] = (signal.SIGINT,), debounce: float = 0.0,
                       clock: Callable[[], float] = time.monotonic) -> Iterator[InterruptFlag]:
    """Turn the first SIGINT (Ctrl-C) into a flag; a second one raises KeyboardInterrupt at once.

    Usage (the loop checks the flag where stopping is safe, after its checkpoint)::

        with graceful_interrupt() as stop:
            for epoch in ...:
                ...; rundir.save_checkpoint(...)
                if stop.requested:
                    break

    Pass ``signals=(signal.SIGINT, signal.SIGTERM)`` to treat a scheduler's SIGTERM the same way. A second signal
    within ``debounce`` seconds of the first counts as the same request: torchrun forwards the Ctrl-C it receives
    to its workers, which the terminal has already sent the same Ctrl-C (``clock``: where the seconds come from;
    tests pass their own, so that a loaded machine cannot stretch the window). The previous handlers are restored
    on exit. Python installs signal handlers only in the main thread; elsewhere the
    flag never trips and signals keep their behaviour. DataLoader workers started through
    ``bayes_dc.data`` ignore SIGINT, so Ctrl-C in a terminal (which signals the whole process group) does
    not kill them mid-epoch.
    """
    flag = InterruptFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        now = clock()
        if flag.requested:
            if now - flag.at < debounce:
                return
            raise KeyboardInterrupt
        flag.requested, flag.signal_name, flag.at = True, signal.Signals(signum).name, now
        print(f"\n{flag.signal_name} received: stopping after the next checkpoint; send it again to stop now",
              file=sys.stderr, flush=True)

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield flag
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


__all__ = ["InterruptFlag", "graceful_interrupt"]
