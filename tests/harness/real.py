"""Real components are required in CI.

Locally a test whose real component (libvirtd, the guestfs appliance, the nested VM)
is missing is skipped with the reason; with VIRTBACKUP_REQUIRE_REAL=1, which .ci/run
sets, the same test fails instead, so CI can never pass by skipping.
"""

import os
from typing import NoReturn

import pytest

REQUIRE_REAL = os.environ.get("VIRTBACKUP_REQUIRE_REAL") == "1"


def unavailable(component: str, why: str) -> NoReturn:
    message = f"{component} unavailable: {why}"
    if REQUIRE_REAL:
        pytest.fail(message + " (VIRTBACKUP_REQUIRE_REAL=1: real components are required)")
    pytest.skip(message)
