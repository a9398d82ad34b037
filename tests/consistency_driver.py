"""A backup run to be killed: opens the consistency window and stops at a given stage.

    python consistency_driver.py STATE_DIR DOMAIN METHOD STAGE MARKER

It writes STAGE to MARKER when it reaches the stage, then waits there forever (until
the test kills it with SIGKILL). Stages: window (right after the snapshot or
shutdown), stream (reading the image slowly, as the data path would), commit (the
merge job runs, before the switch back), pivot (switched back, overlay not yet
deleted).
"""

import sys
import time
from pathlib import Path

from consistency_helpers import planned

from virtbackup.adapters.hypervisor.connection import connect
from virtbackup.adapters.hypervisor.domain import Domain
from virtbackup.core.model import Method
from virtbackup.engine.methods.image_source import ConsistencyOptions, SourceContext
from virtbackup.engine.methods.stable_images import stable_images


def reached(marker: Path, stage: str) -> None:
    marker.write_text(stage)
    while True:
        time.sleep(60)


def main() -> None:
    state_dir, domain, method, stage, marker = sys.argv[1:6]
    marker_path = Path(marker)
    real_pivot = Domain.pivot_when_ready

    def pivot_then_stop(dom: Domain, target: str, timeout: float) -> None:
        if stage == "commit":
            reached(marker_path, stage)
        real_pivot(dom, target, timeout)
        if stage == "pivot":
            reached(marker_path, stage)

    Domain.pivot_when_ready = pivot_then_stop  # type: ignore[method-assign]
    options = ConsistencyOptions(shutdown_timeout=2, force_off=True, overlay_min_free=0)
    with connect("qemu:///system") as conn:
        with stable_images(
            conn,
            planned(conn, domain, Method(method), ["vda"]),
            SourceContext(options, state_dir=Path(state_dir)),
        ) as window:
            if stage == "window":
                reached(marker_path, stage)
            # Other stages: let the test write into the overlay first, then go on.
            marker_path.write_text("window")
            go = marker_path.with_name(marker_path.name + ".go")
            while not go.exists():
                time.sleep(0.1)
            if stage == "stream":
                with open(window.images[0].path, "rb") as image:
                    marker_path.write_text(stage)
                    while image.read(4096):
                        time.sleep(1)
                reached(marker_path, "streamed-everything-too-early")


if __name__ == "__main__":
    main()
