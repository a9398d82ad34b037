"""Command-line interface: the only place that prints, draws and maps errors to exit codes."""

from virtbackup.cli.main import main

__all__ = ["main"]
