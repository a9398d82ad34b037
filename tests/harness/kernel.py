"""The distro kernel that test guests boot: found on the host, never named.

Machines of one kind differ here: the installed kernel's version changes with every point
release, several may be installed side by side, and the running kernel (`uname -r`) is
the host's or the container's, often without an image in /boot. A kernel is usable when
both its image /boot/vmlinuz-VERSION and its modules /lib/modules/VERSION/modules.dep are
there (the guests load modules from that tree). The tiny guest and the nested VM take the
newest usable one, so both boot the same kernel.
"""

import re
from pathlib import Path

BOOT = Path("/boot")
MODULES = Path("/lib/modules")


def version_key(version: str) -> list[str | int]:
    """6.1.0-10-amd64 sorts after 6.1.0-9-amd64: runs of digits compare as numbers.

    re.split with a group puts text at even and numbers at odd positions, so two keys
    always compare like with like."""
    return [
        int(part) if index % 2 else part for index, part in enumerate(re.split(r"(\d+)", version))
    ]


def usable_kernels(boot: Path = BOOT, modules: Path = MODULES) -> list[str]:
    """Versions with an image and modules, oldest first."""
    versions = (path.name.removeprefix("vmlinuz-") for path in boot.glob("vmlinuz-*"))
    usable = [v for v in versions if (modules / v / "modules.dep").is_file()]
    return sorted(usable, key=version_key)


def newest_kernel(boot: Path = BOOT, modules: Path = MODULES) -> str | None:
    """The newest usable kernel's version, None if there is none."""
    found = usable_kernels(boot, modules)
    return found[-1] if found else None


def no_kernel_reason(boot: Path = BOOT, modules: Path = MODULES) -> str:
    """Why newest_kernel found nothing, for the test's one line."""
    images = sorted(path.name for path in boot.glob("vmlinuz-*"))
    if not images:
        return f"no {boot}/vmlinuz-* (apt-get install linux-image-amd64)"
    return f"none of {', '.join(images)} has its modules in {modules} (reinstall that kernel)"
