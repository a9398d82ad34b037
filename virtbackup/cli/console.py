"""Where the CLI writes: the consoles of standard output and error, and the log handlers
(rich on a terminal, plain timestamped lines otherwise: cron, log files; syslog priority
prefixes when stderr goes to the systemd journal). The view modules draw on these."""

import logging
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.text import Text

from virtbackup.core.text import printable

stderr_console = Console(stderr=True)


def stdout_console(min_width: int = 0, *, also_on_terminal: bool = False) -> Console:
    """Standard output. Mail from cron and redirected output get lines `min_width` wide at
    least (wide lines beat paths folded at 80); a terminal too when asked."""
    console = Console()
    if min_width and (also_on_terminal or not console.is_terminal):
        return Console(width=max(console.width, min_width))
    return console


PLAIN_FORMAT = "%(asctime)s %(levelname)s %(message)s"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"

# sd-daemon(3): a "<N>" prefix sets the journal priority of a line written to stderr.
_SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def text(value: str, style: str = "") -> Text:
    """A table cell or line for rich: never read as markup, control characters escaped."""
    return Text(printable(value, keep_newlines=True), style=style)


class SafeFormatter(logging.Formatter):
    """Log lines name domains, paths and backups' contents: control characters in them are
    escaped so that no line can repaint the terminal or pass for another line."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        return printable(super().formatMessage(record))


class JournalFormatter(logging.Formatter):
    """The journal adds its own timestamps; it wants the priority instead."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _SYSLOG_PRIORITY.get(record.levelno, 6)
        return f"<{priority}>{printable(record.getMessage())}"


def level_for(verbosity: int) -> int:
    return {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)


def console_handler() -> logging.Handler:
    handler: logging.Handler
    if os.environ.get("JOURNAL_STREAM"):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JournalFormatter())
    elif sys.stderr.isatty():
        handler = RichHandler(console=stderr_console, show_path=False, markup=False)
        handler.setFormatter(SafeFormatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(SafeFormatter(PLAIN_FORMAT, TIME_FORMAT))
    return handler


class LogFileHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Plain timestamped lines appended to a file readable by root only."""

    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        super().__init__(os.fdopen(fd, "a", encoding="utf-8", buffering=1))
        self.setFormatter(SafeFormatter(PLAIN_FORMAT, TIME_FORMAT))


def setup_logging(verbosity: int, log_file: Path | None = None) -> None:
    root = logging.getLogger()
    root.handlers[:] = [console_handler()]
    if log_file is not None:
        root.handlers.append(LogFileHandler(log_file))
    root.setLevel(level_for(verbosity))


def error_line(message: str) -> None:
    """The one line the user reads when a command fails; the log file gets it too."""
    try:
        print(f"virtbackup: error: {printable(message)}", file=sys.stderr)
    except OSError:
        pass  # a closed pipe or a hung-up terminal: there is no one to tell but the log file
    record = logging.LogRecord("virtbackup", logging.ERROR, "", 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, LogFileHandler):
            handler.handle(record)
