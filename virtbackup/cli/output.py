"""Logging setup: rich on a terminal, plain timestamped lines otherwise (cron, journald)."""

import logging
import sys

from rich.console import Console
from rich.logging import RichHandler

stderr_console = Console(stderr=True)


def setup_logging(verbosity: int) -> None:
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    handler: logging.Handler
    if sys.stderr.isatty():
        handler = RichHandler(console=stderr_console, show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S%z")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def error_line(message: str) -> None:
    """The one line the user reads when a command fails."""
    print(f"virtbackup: error: {message}", file=sys.stderr)
