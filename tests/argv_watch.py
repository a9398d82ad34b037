"""The argument list of every process on the host, sampled while a command runs: where a
credential must never be."""

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

EVERY_SECONDS = 0.005  # qemu-img runs for a fraction of a second


@contextmanager
def argument_lists() -> Iterator[list[bytes]]:
    """Each distinct /proc/PID/cmdline seen until the block ends (NUL-separated)."""
    seen: list[bytes] = []
    stop = threading.Event()

    def sample() -> None:
        distinct: set[bytes] = set()
        while not stop.wait(EVERY_SECONDS):
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    argv = cmdline.read_bytes()
                except OSError:  # the process ended
                    continue
                if argv and argv not in distinct:
                    distinct.add(argv)
                    seen.append(argv)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield seen
    finally:
        stop.set()
        sampler.join()
