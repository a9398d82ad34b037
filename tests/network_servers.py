"""Real storage servers on this host for the network disk tests: `qemu-nbd` serving an
image on a unix socket, and Debian's `tgtd` serving a file as an iSCSI LUN on loopback
(optionally with a CHAP account). Each is stopped (by its own pid) and its files removed
when the `with` block ends, also when a test fails."""

import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

READY_SECONDS = 20


@dataclass(frozen=True)
class NbdServer:
    socket: Path

    @property
    def url(self) -> str:
        """qemu's name for the export, for a reference copy read beside the guest."""
        return f"nbd+unix:///?socket={self.socket}"

    def disk_xml(self, target: str) -> str:
        return f"""
    <disk type='network' device='disk'><driver name='qemu' type='raw'/>
      <source protocol='nbd'><host transport='unix' socket='{self.socket}'/></source>
      <target dev='{target}' bus='virtio'/></disk>"""


@dataclass(frozen=True)
class IscsiTarget:
    port: int
    iqn: str

    @property
    def url(self) -> str:
        return f"iscsi://127.0.0.1:{self.port}/{self.iqn}/1"

    def disk_xml(self, target: str, auth: str = "") -> str:
        return f"""
    <disk type='network' device='disk'><driver name='qemu' type='raw'/>{auth}
      <source protocol='iscsi' name='{self.iqn}/1'><host name='127.0.0.1' port='{self.port}'/>
      </source><target dev='{target}' bus='virtio'/></disk>"""


def _wait_until(ready: Callable[[], bool], what: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while not ready():
        if server.poll() is not None:
            raise RuntimeError(f"{what} ended at once with status {server.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start within {READY_SECONDS}s")
        time.sleep(0.1)


def _stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@contextmanager
def nbd_server(image: Path, sock: Path) -> Iterator[NbdServer]:
    """`qemu-nbd` serving the raw `image` on the unix socket `sock` to several clients at
    once (the guest's qemu and a reference copy), until the block ends."""
    server = subprocess.Popen(
        ["qemu-nbd", "--persistent", "-f", "raw", "-e", "4", "-k", str(sock), str(image)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_until(sock.exists, "qemu-nbd", server)
        os.chmod(sock, 0o666)  # qemu runs as its own user
        yield NbdServer(sock)
    finally:
        _stop(server)
        sock.unlink(missing_ok=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def iscsi_target(
    image: Path, iqn: str, chap: tuple[str, str] | None = None
) -> Iterator[IscsiTarget]:
    """Debian's `tgtd` serving `image` as LUN 1 of `iqn` on 127.0.0.1, on a port and a
    control socket of its own (other tgtd instances are left alone); with `chap`
    (user, password) the initiator must log in with it."""
    port = _free_port()
    control = str(random.randrange(20000, 32000))  # tgtd takes no larger number
    server = subprocess.Popen(
        ["tgtd", "-f", "-C", control, "--iscsi", f"portal=127.0.0.1:{port}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def admin(*args: str, check: bool = True) -> bool:
        argv = ["tgtadm", "-C", control, "--lld", "iscsi", *args]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:8])}: {done.stderr.strip()}")
        return done.returncode == 0

    try:
        _wait_until(lambda: admin("--op", "show", "--mode", "sys", check=False), "tgtd", server)
        admin("--op", "new", "--mode", "target", "--tid", "1", "-T", iqn)
        admin("--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", str(image))
        admin("--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL")
        if chap is not None:
            user, password = chap
            admin("--op", "new", "--mode", "account", "--user", user, "--password", password)
            admin("--op", "bind", "--mode", "account", "--tid", "1", "--user", user)
        yield IscsiTarget(port, iqn)
    finally:
        # tgtd ignores SIGTERM: it is told to end through its control socket
        if server.poll() is None:
            admin("--op", "delete", "--mode", "system", check=False)
        _stop(server)
