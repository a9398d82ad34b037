"""engine/shrink/guest_reclaim.reclaim: what is done to each filesystem and volume group, without an
appliance (a fake handle records the calls; the real one is in test_shrink.py)."""

from typing import Any

from virtbackup.core.progress import NullProgress
from virtbackup.core.shrink_plan import ShrinkOptions
from virtbackup.engine.shrink.guest_reclaim import reclaim


class FakeAppliance:
    def __init__(self, filesystems: dict[str, str], vgs: list[str], read_only: set[str]) -> None:
        self._filesystems = filesystems
        self._vgs = vgs
        self._read_only = read_only
        self.calls: list[tuple[str, Any]] = []
        self.trim_result: dict[str, str | None] = {}

    def filesystems(self) -> dict[str, str]:
        return self._filesystems

    def volume_groups(self) -> list[str]:
        return self._vgs

    def read_only_lvs(self) -> set[str]:
        return self._read_only

    def trim(self, fs: str, *, zero_fallback: bool = False) -> str | None:
        self.calls.append(("trim", (fs, zero_fallback)))
        return self.trim_result.get(fs)

    def discard_swap(self, dev: str) -> str | None:
        self.calls.append(("swap", dev))
        return None

    def reclaim_vg_free(self, vg: str) -> str | None:
        self.calls.append(("vg", vg))
        return "no free space to reclaim (Insufficient free extents)" if vg == "full" else None


class Stages(NullProgress):
    def __init__(self) -> None:
        self.stages: list[tuple[str, int | None]] = []

    def stage(self, domain: str, text: str, total_stages: int | None = None) -> None:
        self.stages.append((text, total_stages))


def test_every_kind_of_filesystem_and_volume_group() -> None:
    app = FakeAppliance(
        {
            "/dev/sda1": "ext4",
            "/dev/sda2": "swap",
            "/dev/sda3": "unknown",
            "/dev/sdb1": "crypto_LUKS",
            "/dev/sdb2": "vfat",
            "/dev/vg0/root": "xfs",
            "/dev/vg0/old": "ext4",
            "/dev/vg0/swap": "swap",
            "/dev/vg1/keep": "ext4",
        },
        ["full", "vg0", "vg1", "vg2"],
        {"/dev/vg0/old"},
    )
    app.trim_result["/dev/sdb2"] = "cannot be mounted (wrong fs type)"
    stages = Stages()
    options = ShrinkOptions(ignore=("vg1/keep", "vg2"))
    notes = reclaim(app, ["vda", "vdb"], options, stages, "web1")  # type: ignore[arg-type]
    assert app.calls == [
        ("trim", ("/dev/sda1", False)),
        ("swap", "/dev/sda2"),
        ("trim", ("/dev/sdb2", False)),
        ("trim", ("/dev/vg0/root", False)),
        ("swap", "/dev/vg0/swap"),
        ("vg", "full"),
        ("vg", "vg0"),
        ("vg", "vg1"),
    ]
    assert notes == [
        "vda3: no filesystem found, left alone",
        "vdb1: encrypted (crypto_LUKS), cannot be trimmed",
        "vdb2: cannot be mounted (wrong fs type)",
        "/dev/vg0/old: read-only LV, left alone",
        "/dev/vg1/keep: ignored (--ignore)",
        "volume group full: no free space to reclaim (Insufficient free extents)",
        "volume group vg2: ignored (--ignore)",
    ]
    texts = [text for text, _ in stages.stages]
    assert texts == [
        "trimming vda1 (ext4)",
        "discarding swap vda2",
        "trimming vdb2 (vfat)",
        "trimming /dev/vg0/root (xfs)",
        "discarding swap /dev/vg0/swap",
        "reclaiming free space of volume group full",
        "reclaiming free space of volume group vg0",
        "reclaiming free space of volume group vg1",
        "flushing and stopping the appliance",
    ]
    assert {total for _, total in stages.stages} == {2 + 9 + 4}


def test_copy_mode_falls_back_to_zeroing() -> None:
    app = FakeAppliance({"/dev/sda1": "ext4"}, [], set())
    reclaim(app, ["vda"], ShrinkOptions(), Stages(), "d", zero_fallback=True)  # type: ignore[arg-type]
    assert app.calls == [("trim", ("/dev/sda1", True))]
