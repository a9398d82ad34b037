"""Errors of virtbackup. Each class carries its exit code; the CLI maps them in one place.

The message of an error is what the user reads: one line saying what is wrong and,
where there is one, what to do about it.
"""

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # some domain or disk failed; the others were still done
    USAGE = 2  # usage or configuration error
    LOCKED = 3  # another run holds the lock
    INTERRUPTED = 130  # SIGINT, SIGTERM or SIGHUP


class VirtbackupError(Exception):
    """Base of every error that reaches the user as one line."""

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}: {self.hint}" if self.hint else self.message


class UsageError(VirtbackupError):
    """Bad input: option, name, path or URI."""

    exit_code = ExitCode.USAGE


class ConfigError(UsageError):
    """The configuration file is wrong."""


class MissingComponent(UsageError):
    """A program or library virtbackup needs is not installed."""


def missing_binding(library: str, package: str, err: ImportError) -> MissingComponent:
    """The distribution's Python bindings of `library` cannot be imported.

    They are C extensions shipped by Debian for its /usr/bin/python3, imported only by
    the commands that need them, so that `--help` and the pure core work without them.
    """
    return MissingComponent(
        f"the {library} Python bindings cannot be imported ({err})",
        f"apt-get install {package}, then install it and run virtbackup from a virtualenv "
        "made from /usr/bin/python3 with --system-site-packages (contrib/setup-host.sh "
        "does both)",
    )


class LockHeld(VirtbackupError):
    """Another run holds the lock of the host or of a domain."""

    exit_code = ExitCode.LOCKED


class Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP arrived; raised so that every `with` block unwinds.

    Not an Exception, and so not a VirtbackupError: a handler meant for one failing disk
    or domain (`except VirtbackupError`, `except Exception`) lets it through, and the
    signal ends the whole run, as KeyboardInterrupt would. It reads like an error
    otherwise (message, hint, exit code)."""

    exit_code: ExitCode = ExitCode.INTERRUPTED

    def __init__(self, message: str = "interrupted", hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}: {self.hint}" if self.hint else self.message


class CommandFailed(VirtbackupError):
    """An external program exited non-zero."""

    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        last_line = next((ln for ln in reversed(stderr.splitlines()) if ln.strip()), "")
        detail = f": {last_line.strip()}" if last_line else ""
        super().__init__(f"{argv[0]} exited with status {returncode}{detail}")
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


class CommandTimedOut(CommandFailed):
    """An external program did not finish within its bound and was killed (a hung NFS
    image, a FIFO where an image should be)."""

    def __init__(self, argv: list[str], timeout: float) -> None:
        message = f"{argv[0]} did not finish within {timeout:g} s"
        super().__init__(argv, -9, message)
        self.message = message
        self.args = (message,)
