"""qemu-nbd against a socket path someone else took first: the real qemu-nbd is never
started there, and what was planted stays as it was."""

import os
import socket
import subprocess
from pathlib import Path

import pytest

from virtbackup.adapters import qemu_nbd


def test_a_planted_socket_is_refused_and_left_alone(tmp_path: Path) -> None:
    image = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "1M"], check=True)
    path = tmp_path / "planted.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as planted:
        planted.bind(str(path))
        planted.listen()
        inode = os.lstat(path).st_ino
        try:
            with pytest.raises(qemu_nbd.NbdServerError, match="exists already"):
                qemu_nbd.serve(str(image), str(path), "vda", None)
            assert qemu_nbd.servers_on(str(path)) == []
            assert os.lstat(path).st_ino == inode  # not replaced by a server of ours
        finally:
            qemu_nbd.stop_serving(str(path))
