"""How the engine reports progress: a small interface the CLI implements (bars, JSON, none).

The engine never prints; it calls a sink. Calls may come from worker threads, so a
sink must be thread-safe (rich's Progress is).
"""

from typing import Protocol


class ProgressSink(Protocol):
    def on_start(self, total: int, label: str) -> None:
        """A task of `total` bytes named `label` (e.g. "vda") begins."""

    def on_advance(self, nbytes: int) -> None:
        """`nbytes` more bytes of the current task are done."""

    def on_done(self) -> None:
        """The current task ended (done or failed)."""


class NullProgress:
    """The sink for callers that do not watch."""

    def on_start(self, total: int, label: str) -> None:
        pass

    def on_advance(self, nbytes: int) -> None:
        pass

    def on_done(self) -> None:
        pass
