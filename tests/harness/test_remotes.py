"""The loopback test servers answer rclone, keep their secrets in 0600 config files, and
can be stopped and started again on the same port."""

import stat

from harness.remotes import RemoteServer, accepts
from virtbackup.adapters import rclone


def test_server_is_reachable_through_rclone(remote: RemoteServer) -> None:
    rclone.check_remote(remote.remote)
    rclone.write_text(remote.remote, "hello.txt", "hello")
    assert rclone.read_text(remote.remote, "hello.txt") == "hello"
    local = remote.local_path("hello.txt")
    assert local is None or local.read_text() == "hello"
    config = remote.remote.config
    assert config is not None and stat.S_IMODE(config.stat().st_mode) == 0o600


def test_tests_get_separate_base_paths(sftp_remote: RemoteServer, s3_remote: RemoteServer) -> None:
    assert sftp_remote.remote.location != sftp_remote.server.root_location
    assert rclone.list_entries(s3_remote.remote, "") == []


def test_stop_and_start_on_the_same_port(remote: RemoteServer) -> None:
    port = remote.server.port
    remote.stop()
    assert not accepts(port)
    remote.start()
    assert remote.server.port == port and accepts(port)
    rclone.check_remote(remote.remote)
