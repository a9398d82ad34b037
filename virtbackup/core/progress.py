"""How the engine reports what it does: small interfaces the caller implements.

The engine never prints; it calls a sink the caller gives. The CLI's printers (bars,
plain lines, JSON) implement these; other callers log them or record them.

    ProgressSink  bytes of one task at a time (a disk streamed, restored, verified)
    StepSink      each change made to a domain (or, in a dry run, one that would be made)
                  and each warning the user must know about
    StageSink     a StepSink that also counts stages of long work without byte counts
                  (shrink: the appliance launch, each filesystem, each volume group)

Calls may come from worker threads, so a sink must be thread-safe (rich's Progress is).
"""

import logging
from typing import Protocol

log = logging.getLogger("virtbackup.steps")


class ProgressSink(Protocol):
    def on_start(self, total: int, label: str) -> None:
        """A task of `total` bytes named `label` (e.g. "vda") begins."""

    def on_advance(self, nbytes: int) -> None:
        """`nbytes` more bytes of the current task are done."""

    def on_done(self) -> None:
        """The current task ended (done or failed)."""


class StepSink(Protocol):
    def step(self, domain: str, text: str) -> None:
        """A change made to `domain` (or, in a dry run, one that would be made)."""

    def warning(self, domain: str, text: str) -> None:
        """Something the user should know about `domain`."""


class StageSink(StepSink, Protocol):
    def begin(self, domain: str, total_stages: int) -> None:
        """Work on `domain` starts with about `total_stages` stages."""

    def stage(self, domain: str, text: str, total_stages: int | None = None) -> None:
        """The next stage starts (the previous one is done); the total may be revised."""

    def end(self, domain: str) -> None:
        """Work on `domain` ended (done or failed)."""


class NullProgress:
    """The sink of every kind for callers that do not watch."""

    def on_start(self, total: int, label: str) -> None:
        pass

    def on_advance(self, nbytes: int) -> None:
        pass

    def on_done(self) -> None:
        pass

    def step(self, domain: str, text: str) -> None:
        pass

    def warning(self, domain: str, text: str) -> None:
        pass

    def begin(self, domain: str, total_stages: int) -> None:
        pass

    def stage(self, domain: str, text: str, total_stages: int | None = None) -> None:
        pass

    def end(self, domain: str) -> None:
        pass


class LogSteps:
    """The sink for callers without their own: steps at INFO, warnings at WARNING, stages
    at DEBUG; each line names the domain, then `prefix` (what the work is part of)."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def step(self, domain: str, text: str) -> None:
        log.info("%s: %s%s", domain, self.prefix, text)

    def warning(self, domain: str, text: str) -> None:
        log.warning("%s: %s%s", domain, self.prefix, text)

    def begin(self, domain: str, total_stages: int) -> None:
        pass

    def stage(self, domain: str, text: str, total_stages: int | None = None) -> None:
        log.debug("%s: %s%s", domain, self.prefix, text)

    def end(self, domain: str) -> None:
        pass


class RecordingSteps:
    """Keeps every step and warning, for tests and for JSON output."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, str]] = []
        self.warnings: list[tuple[str, str]] = []

    def step(self, domain: str, text: str) -> None:
        self.steps.append((domain, text))

    def warning(self, domain: str, text: str) -> None:
        self.warnings.append((domain, text))
