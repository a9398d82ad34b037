"""The host files a qcow2 header names, read from images qemu-img made, and from junk."""

import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtbackup.core.qcow2_refs import HEAD_BYTES, ImageReferences, qcow2_references


def _image(path: Path, *options: str) -> bytes:
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", *options, str(path), "4M"], check=True
    )
    with open(path, "rb") as image:
        return image.read(HEAD_BYTES)


def test_a_plain_image_names_nothing(tmp_path: Path) -> None:
    assert qcow2_references(_image(tmp_path / "a.qcow2")) == ImageReferences()


@pytest.mark.parametrize("compat", ["0.10", "1.1"])
def test_a_backing_file(tmp_path: Path, compat: str) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(bytes(4 << 20))
    head = _image(tmp_path / "top.qcow2", "-o", f"compat={compat}", "-b", str(base), "-F", "raw")
    assert qcow2_references(head) == ImageReferences(backing_file=str(base))


def test_an_external_data_file(tmp_path: Path) -> None:
    data = tmp_path / "data.raw"
    head = _image(tmp_path / "top.qcow2", "-o", f"data_file={data}")
    assert qcow2_references(head) == ImageReferences(data_file=str(data))


def test_the_data_file_bit_without_a_name(tmp_path: Path) -> None:
    head = bytearray(_image(tmp_path / "top.qcow2", "-o", f"data_file={tmp_path / 'd'}"))
    start = head.index(b"DATA")  # the extension's type, big-endian 0x44415441
    head[start : start + 4] = b"\x00\x00\x00\x00"  # end of extensions: the name is gone
    assert qcow2_references(bytes(head)) == ImageReferences(data_file="")


@pytest.mark.parametrize(
    "head",
    [
        b"",
        b"QFI\xfb",
        b"\x00" * 4096,
        b"QFI\xfb" + b"\xff" * 200,  # huge offsets and sizes
        b"QFI\xfb\x00\x00\x00\x03" + b"\x00" * 64 + b"\x00" * 28 + b"\xff\xff\xff\xff",
    ],
)
def test_junk_is_no_crash(head: bytes) -> None:
    references = qcow2_references(head)
    assert references.data_file in (None, "")
    assert references.backing_file is None or "cannot be read" in references.backing_file


@given(st.binary(max_size=512), st.integers(0, 600), st.integers(0, 2000))
@settings(max_examples=300, deadline=None)
def test_any_header_is_no_crash(tail: bytes, offset: int, size: int) -> None:
    head = b"QFI\xfb" + struct.pack(">IQI", 3, offset, size) + tail
    references = qcow2_references(head)
    assert references.backing_file is None or isinstance(references.backing_file, str)
