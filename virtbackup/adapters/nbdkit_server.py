"""nbdkit serving a Python plugin read-only on a unix socket, for as long as a block runs.

    with socket_dir() as private:
        with nbdkit_serving(plugin, {"backup": ..., "disk": "vda"}, private / "vda.sock"):
            ...   # nbd+unix:///?socket=<private>/vda.sock

The socket is made in a private directory (0700) and reached by root only. nbdkit runs
in the foreground as our child and dies with us (--exit-with-parent), so even a killed
run leaves no server behind; on leaving the block it is stopped (SIGTERM, then SIGKILL)
and its socket removed. What it prints goes to a log beside the socket: lines the plugin
starts with `virtbackup: ` are the reasons of failed reads, read back by `reasons()`.
"""

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from virtbackup.adapters.runner import spawn
from virtbackup.core.errors import VirtbackupError

START_TIMEOUT = 60.0  # opening a large repository index; far above what a start takes
STOP_TIMEOUT = 10.0
REASON_PREFIX = "virtbackup: "


class NbdkitError(VirtbackupError):
    """nbdkit did not start serving."""


class NbdkitServer:
    """A running nbdkit; see nbdkit_serving."""

    def __init__(self, process: subprocess.Popen[bytes], socket: Path, log: Path) -> None:
        self.process = process
        self.socket = socket
        self.log = log

    @property
    def uri(self) -> str:
        return f"nbd+unix:///?socket={self.socket}"

    def reasons(self) -> list[str]:
        """What the plugin said about reads it failed, oldest first."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return []
        return [
            line.removeprefix(REASON_PREFIX)
            for line in text.splitlines()
            if line.startswith(REASON_PREFIX)
        ]


@contextmanager
def socket_dir(parent: Path | None = None) -> Iterator[Path]:
    """A new private directory (0700) for sockets in `parent` (the temporary directory
    by default), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=".virtbackup-nbd-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def nbdkit_serving(
    plugin: Path, parameters: Mapping[str, str], socket: Path
) -> Iterator[NbdkitServer]:
    """nbdkit's python plugin `plugin` with `parameters`, serving read-only on `socket`
    (in a private directory) until the block ends. NbdkitError with the plugin's reason
    when it stops before serving."""
    log = socket.with_name(socket.name + ".log")
    argv = [
        "nbdkit",
        "--foreground",
        "--readonly",
        "--exit-with-parent",
        "--unix",
        str(socket),
        "python",
        str(plugin),
        *(f"{key}={value}" for key, value in parameters.items()),
    ]
    # the plugin imports virtbackup and its libraries from where we run
    env = {"PYTHONPATH": os.pathsep.join(entry for entry in sys.path if entry)}
    with open(log, "wb") as output:
        process = spawn(argv, stdout=output, stderr=output, env=env)
    server = NbdkitServer(process, socket, log)
    try:
        _wait_for_socket(server)
        yield server
    finally:
        _stop(process)
        socket.unlink(missing_ok=True)


def _wait_for_socket(server: NbdkitServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not _is_socket(server.socket):
        if server.process.poll() is not None:
            reasons = server.reasons()
            last = _last_line(server.log)
            raise NbdkitError(
                f"nbdkit did not start: {reasons[-1] if reasons else last}",
                None if reasons else "run with -v to see the command",
            )
        if time.monotonic() > deadline:
            raise NbdkitError(f"nbdkit did not listen on {server.socket} in {START_TIMEOUT:g} s")
        time.sleep(0.05)


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _last_line(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    return lines[-1] if lines else "it exited without a word"


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
