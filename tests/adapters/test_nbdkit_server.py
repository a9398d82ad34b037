"""nbdkit as a child: a plugin that fails before serving is one line with its reason,
and nothing is left running or on disk."""

import subprocess
from pathlib import Path

import pytest

from virtbackup.adapters.nbdkit_server import NbdkitError, nbdkit_serving, socket_dir

BROKEN = """
import sys

API_VERSION = 2


def config_complete():
    print("virtbackup: the backup is broken", file=sys.stderr, flush=True)
    raise RuntimeError("broken")


def open(readonly):
    return 1


def get_size(h):
    return 0


def pread(h, buf, offset, flags):
    pass
"""


def test_a_plugin_failing_before_serving_is_its_reason_and_leaves_nothing(tmp_path: Path) -> None:
    plugin = tmp_path / "broken.py"
    plugin.write_text(BROKEN)
    with socket_dir(tmp_path) as private:
        assert private.stat().st_mode & 0o777 == 0o700
        with pytest.raises(NbdkitError) as raised:
            with nbdkit_serving(plugin, {}, private / "vda.sock"):
                pass
        assert str(raised.value) == "nbdkit did not start: the backup is broken"
        assert sorted(p.name for p in private.iterdir()) == ["vda.sock.log"]
    assert list(tmp_path.iterdir()) == [plugin]
    leftover = subprocess.run(["pgrep", "-f", str(plugin)], capture_output=True, check=False)
    assert leftover.stdout == b""
