"""Byte counts as people read them: binary units, one decimal (``1.5 GiB``, ``512 B``)."""

UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_size(nbytes: int | None) -> str:
    """`nbytes` in the largest unit that keeps it at 1 or more (TiB at most); "-" for a
    size that is not known."""
    if nbytes is None:
        return "-"
    value = float(nbytes)
    for unit in UNITS[:-1]:
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} {UNITS[-1]}"
