import pytest

from virtbackup.core.sizes import human_size

MiB = 1024 * 1024


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (None, "-"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (16 * MiB, "16.0 MiB"),
        (3 * 1024**4, "3.0 TiB"),
        (5 * 1024**5, "5120.0 TiB"),
    ],
)
def test_human_size(size: int | None, text: str) -> None:
    assert human_size(size) == text
