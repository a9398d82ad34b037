"""The one place where virtbackup runs external programs.

Every program is called with an argument list (never through a shell). Tests replace
`run` to inject faults; `-v` shows each command through the logger.
"""

import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from typing import IO

from virtbackup.core.errors import CommandFailed, CommandTimedOut, MissingComponent

log = logging.getLogger(__name__)


def run(
    argv: list[str],
    *,
    check: bool = True,
    input: bytes | None = None,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run argv, capture stdout and stderr, raise CommandFailed on a non-zero exit and
    CommandTimedOut (a CommandFailed) when it outlives `timeout`.
    `env` adds variables to (never replaces) our own environment."""
    require_program(argv[0])
    log.debug("run: %s", shlex.join(argv))
    try:
        result = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            timeout=timeout,
            check=False,
            env={**os.environ, **env} if env else None,
        )
    except subprocess.TimeoutExpired:  # run() has killed it
        raise CommandTimedOut(argv, timeout or 0) from None
    if check and result.returncode != 0:
        raise CommandFailed(argv, result.returncode, result.stderr.decode(errors="replace"))
    return result


def run_text(argv: list[str], *, check: bool = True, timeout: float | None = None) -> str:
    """Run argv and return its standard output as text."""
    return run(argv, check=check, timeout=timeout).stdout.decode(errors="replace")


def spawn(
    argv: list[str],
    *,
    stdin: int | IO[bytes] | None = None,
    stdout: int | IO[bytes] | None = None,
    stderr: int | IO[bytes] | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start argv without waiting for it, for programs that stream through a pipe.

    The caller owns the process: it must wait for it (or kill it) and judge its exit
    status. Nothing is inherited from our stdin unless asked for, so a program that
    would prompt sees end of file instead of hanging a cron job. `env` adds variables
    to our own environment, as in run()."""
    require_program(argv[0])
    log.debug("spawn: %s", shlex.join(argv))
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL if stdin is None else stdin,
        stdout=stdout,
        stderr=stderr,
        env={**os.environ, **env} if env else None,
    )


def require_program(name: str) -> str:
    """Return the path of program `name`, or raise a one-line error naming its package."""
    path = shutil.which(name)
    if path is None:
        package = _PACKAGE_OF.get(name, name)
        raise MissingComponent(f"{name} is not installed", f"apt-get install {package}")
    return path


_PACKAGE_OF = {
    "qemu-img": "qemu-utils",
    "lz4": "lz4",
    "lvs": "lvm2",
    "lvcreate": "lvm2",
    "lvremove": "lvm2",
    "findmnt": "util-linux",
    "mount": "mount",
    "umount": "mount",
    "virsh": "libvirt-clients",
    "ssh-keygen": "openssh-client",
}
