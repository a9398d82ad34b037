"""Stop signals during a run: they end it, but never in the middle of a change or undo."""

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from virtbackup.adapters.terminal import detach_hung_up_terminal
from virtbackup.core.errors import Interrupted

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class SignalGuard:
    """SIGINT/SIGTERM/SIGHUP raise Interrupted, except inside `held()`, where they wait."""

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}
        self._depth = 0
        self._pending: int | None = None

    def _active(self) -> bool:
        return threading.current_thread() is threading.main_thread()

    def install(self) -> None:
        if not self._active():
            return
        for signum in SIGNALS:
            if signal.getsignal(signum) == signal.SIG_IGN:
                continue  # e.g. SIGHUP under nohup: the user wants the run to go on
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            detach_hung_up_terminal()  # before anything is logged
        if self._depth:
            self._pending = signum
            log.warning(
                "%s received: finishing the current step first", signal.Signals(signum).name
            )
            return
        raise Interrupted(f"interrupted by {signal.Signals(signum).name}")

    @contextmanager
    def held(self) -> Iterator[None]:
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1

    def raise_pending(self, unwinding: bool) -> None:
        """Raise the held-back signal now, unless an exception is already on its way."""
        if self._depth or self._pending is None:
            return
        signum, self._pending = self._pending, None
        if not unwinding:
            raise Interrupted(f"interrupted by {signal.Signals(signum).name}")
