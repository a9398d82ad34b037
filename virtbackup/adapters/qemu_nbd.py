"""qemu-nbd serving one shut-off qcow2 image read-only over a unix socket, and the
persistent dirty bitmaps that image holds (`qemu-img info`, `qemu-img bitmap`).

    server = serve(image, socket, "vda", bitmap="virtbackup-...")  # until stop_serving
    stop_serving(socket)            # also finds the server a killed run left behind

A server is found by its socket, not by a process id a journal kept: whoever stops it
(the run, or `clean` after a kill -9) looks in /proc for a qemu-nbd serving exactly that
socket, so a recycled process id is never signalled.
"""

import json
import os
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from virtbackup.adapters import runner
from virtbackup.core.errors import VirtbackupError

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
_POLL_SECONDS = 0.05
_PROC = Path("/proc")


class NbdServerError(VirtbackupError):
    """qemu-nbd did not start, or a bitmap could not be read or changed."""


@dataclass(frozen=True)
class Bitmap:
    name: str
    flags: tuple[str, ...]  # qemu's: "auto" (tracks writes), "in-use" (not saved: inconsistent)


def bitmaps(image: str) -> list[Bitmap]:
    """The persistent dirty bitmaps of a qcow2 image."""
    out = runner.run_text(
        ["qemu-img", "info", "-U", "--output=json", "-f", "qcow2", image], timeout=60.0
    )
    try:
        found = json.loads(out).get("format-specific", {}).get("data", {}).get("bitmaps", [])
        return [Bitmap(str(b["name"]), tuple(str(f) for f in b["flags"])) for b in found]
    except (ValueError, AttributeError, KeyError, TypeError) as err:
        raise NbdServerError(f"cannot read the bitmaps of {image}: {err}") from None


def add_bitmap(image: str, name: str) -> None:
    """A new bitmap that records every write from now on (the image must be unused)."""
    runner.run(["qemu-img", "bitmap", "--add", "-f", "qcow2", image, name], timeout=60.0)


def remove_bitmap(image: str, name: str) -> None:
    runner.run(["qemu-img", "bitmap", "--remove", "-f", "qcow2", image, name], timeout=60.0)


def serve(image: str, socket: str, export: str, bitmap: str | None) -> None:
    """Start qemu-nbd serving `image` read-only as `export` on `socket` (with `bitmap`
    as the meta context qemu:dirty-bitmap:<bitmap>), and wait until it listens. Anything
    at `socket` already is someone else's: qemu-nbd would replace it, and its presence
    would pass for ours listening."""
    if os.path.lexists(socket):
        raise NbdServerError(f"{socket} exists already: it is not ours to serve on")
    argv = ["qemu-nbd", "--read-only", "--persistent", "--format=qcow2"]
    argv += ["--export-name", export, "--socket", socket]
    if bitmap is not None:
        argv += ["--bitmap", bitmap]
    with tempfile.TemporaryFile() as errors:
        process = runner.spawn([*argv, image], stderr=errors)
        deadline = time.monotonic() + START_TIMEOUT
        while not os.path.exists(socket):
            if process.poll() is not None:
                errors.seek(0)
                said = errors.read().decode(errors="replace").strip()
                raise NbdServerError(f"qemu-nbd cannot serve {image}: {said}")
            if time.monotonic() > deadline:
                stop_serving(socket)
                raise NbdServerError(f"qemu-nbd did not serve {image} within {START_TIMEOUT:.0f}s")
            time.sleep(_POLL_SECONDS)


def servers_on(socket: str) -> list[int]:
    """The process ids of the qemu-nbd processes serving on `socket`."""
    found = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if os.path.basename(argv[0]) == b"qemu-nbd" and socket.encode() in argv:
            found.append(int(entry.name))
    return found


def stop_serving(socket: str) -> list[int]:
    """End every qemu-nbd serving on `socket` and wait for each; the ids it ended."""
    pids = servers_on(socket)
    for pid in pids:
        _end(pid)
    return pids


def _end(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_TIMEOUT
    while _alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + STOP_TIMEOUT
        time.sleep(_POLL_SECONDS)


def _alive(pid: int) -> bool:
    """Whether `pid` still runs: our own child is reaped, another's looked up."""
    try:
        done, _status = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return (_PROC / str(pid)).exists() and not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        return (_PROC / str(pid) / "stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return False
