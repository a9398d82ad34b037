"""Fixtures of the whole suite live in tests/harness/; this file only loads them."""

pytest_plugins = [
    "harness.libvirtd",
    "harness.guest",
    "harness.nested",
    "harness.guestfs",
    "harness.cli",
    "harness.remotes",
]
