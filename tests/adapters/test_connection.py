"""Connections: a working one, and one clear line for each way it cannot open."""

from typing import Any

import pytest

from virtbackup.adapters.hypervisor.bindings import HypervisorError
from virtbackup.adapters.hypervisor.connection import (
    ConnectFailed,
    connect,
    connect_error,
    is_remote,
)

pytestmark = pytest.mark.libvirt


def test_connect_and_close(libvirt_conn: Any, libvirt: Any) -> None:
    with connect("qemu:///system") as hypervisor:
        assert hypervisor.uri == "qemu:///system"
    with connect("qemu:///system", readonly=True) as hypervisor:
        assert hypervisor.domain_names() is not None
    with pytest.raises(HypervisorError, match="invalid connection"):
        hypervisor.domain_names()  # closed on leaving the block


@pytest.mark.parametrize(
    ("uri", "parts"),
    [
        ("foo:///x", ["cannot connect to foo:///x", "no connection driver", "check --connect"]),
        ("not a uri", ["cannot connect to not a uri", "check --connect"]),
        ("qemu:///nonexistent", ["unexpected qemu URI path", "check --connect"]),
        (
            "qemu+unix:///system?socket=/nonexistent/libvirt-sock",
            ["Failed to connect socket", "is libvirtd running?"],
        ),
        (
            "qemu+ssh://vbtest.invalid/system",
            ["Could not resolve hostname", "check that the host is reachable"],
        ),
        (
            "qemu+tcp://127.0.0.1:1/system",
            ["Connection refused", "check that the host is reachable"],
        ),
        ("", ["empty connection URI"]),
    ],
)
def test_failures_are_one_usage_error(libvirt_conn: Any, uri: str, parts: list[str]) -> None:
    with pytest.raises(ConnectFailed) as caught:
        with connect(uri):
            pass
    message = str(caught.value)
    assert caught.value.exit_code == 2
    assert "\n" not in message
    for part in parts:
        assert part in message


class FakeError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message

    def get_error_code(self) -> int:
        return self.code

    def get_error_message(self) -> str:
        return self.message


@pytest.mark.parametrize(
    ("code_name", "message"),
    [
        ("VIR_ERR_AUTH_UNAVAILABLE", "authentication unavailable: no polkit agent available"),
        ("VIR_ERR_AUTH_FAILED", "authentication failed"),
        (
            "VIR_ERR_SYSTEM_ERROR",
            "Failed to connect socket to '/run/libvirt/libvirt-sock': Permission denied",
        ),
        ("VIR_ERR_INTERNAL_ERROR", "Unable to get system bus connection: Could not connect"),
    ],
)
def test_permission_problems_say_so(libvirt: Any, code_name: str, message: str) -> None:
    err = connect_error(libvirt, "qemu:///system", FakeError(getattr(libvirt, code_name), message))
    assert str(err).startswith(f"cannot connect to qemu:///system: {message}: access denied")


@pytest.mark.parametrize(
    ("uri", "remote"),
    [
        ("qemu:///system", False),
        ("qemu:///session", False),
        ("qemu+unix:///system?socket=/x", False),
        ("qemu+ssh://host/system", True),
        ("qemu+ssh://root@host:2222/system", True),
        ("qemu+tls://host/system", True),
        ("qemu://host/system", True),
    ],
)
def test_is_remote(uri: str, remote: bool) -> None:
    assert is_remote(uri) is remote
