"""The terminal a run was started from, which a hangup (SIGHUP) takes away.

After an ssh connection drops or a terminal window closes, every write to the terminal
fails (EIO), wherever it happens: in a log line while the undo stack unwinds, in a
progress bar, in the final line. The run points its standard output and error at
/dev/null instead, so that it can finish putting the domain back and exit 130.
"""

import os

_terminals: set[int] = set()


def note_terminals() -> None:
    """Remember which of stdout and stderr are a terminal (at start, while it is there)."""
    _terminals.clear()
    _terminals.update(fd for fd in (1, 2) if os.isatty(fd))


def detach_hung_up_terminal() -> None:
    """Send what would go to a terminal that has hung up to /dev/null.

    A terminal that is still there (a SIGHUP sent with kill) keeps its output."""
    gone = [fd for fd in sorted(_terminals) if not os.isatty(fd)]
    if not gone:
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in gone:
            os.dup2(devnull, fd)
            _terminals.discard(fd)
    finally:
        os.close(devnull)
