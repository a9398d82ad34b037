"""How the consistency layer and `clean` report what they do: a sink the caller gives.

The engine never prints. It calls `step` for each change it makes to a domain (or, in
a dry run, would make) and `warning` for what the user must know about (no guest agent,
something left for `clean`). The CLI prints them; other callers log them.
"""

import logging
from typing import Protocol

log = logging.getLogger("virtbackup.steps")


class StepSink(Protocol):
    def step(self, domain: str, text: str) -> None:
        """A change made to `domain` (or, in a dry run, one that would be made)."""

    def warning(self, domain: str, text: str) -> None:
        """Something the user should know about `domain`."""


class LogSteps:
    """The sink for callers without their own: steps at INFO, warnings at WARNING."""

    def step(self, domain: str, text: str) -> None:
        log.info("%s: %s", domain, text)

    def warning(self, domain: str, text: str) -> None:
        log.warning("%s: %s", domain, text)


class RecordingSteps:
    """Keeps every report, for tests and for JSON output."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, str]] = []
        self.warnings: list[tuple[str, str]] = []

    def step(self, domain: str, text: str) -> None:
        self.steps.append((domain, text))

    def warning(self, domain: str, text: str) -> None:
        self.warnings.append((domain, text))
