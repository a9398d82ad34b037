"""Reading the JSON documents of a backup (manifest.json, verified.json, ...) strictly:
every field checked as it is read, with one-line messages that name it, because a backup
is untrusted input."""

import json
import re
from datetime import UTC, datetime
from typing import Any

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
MAX_SIZE = (1 << 63) - 1  # what an off_t holds
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}")


class ManifestFormatError(ValueError):
    """The text is not a manifest (or verify record) this version can read."""


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(TIME_FORMAT)


def load_object(text: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        raise ManifestFormatError(f"it is not valid JSON ({err})") from None
    except (ValueError, RecursionError):  # a number of 5000 digits, arrays nested deep
        raise ManifestFormatError("it is not JSON this virtbackup can read") from None
    if not isinstance(document, dict):
        raise ManifestFormatError("it is not a JSON object")
    return document


def field(document: dict[str, Any], name: str, kind: type, where: str = "") -> Any:
    label = f"{where}.{name}" if where else repr(name)
    if name not in document:
        raise ManifestFormatError(f"key {label} is missing")
    value = document[name]
    # bool is an int in Python; a size must not be `true`.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ManifestFormatError(f"key {label} is not of type {kind.__name__}")
    if isinstance(value, str) and not is_text(value):
        raise ManifestFormatError(f"key {label} is not valid text")
    return value


def is_text(value: str) -> bool:
    try:
        value.encode("utf-8")  # JSON can hold lone surrogates, which nothing can print
    except UnicodeEncodeError:
        return False
    return True


def size_field(document: dict[str, Any], name: str, where: str) -> int:
    value: int = field(document, name, int, where)
    if not 0 <= value <= MAX_SIZE:
        raise ManifestFormatError(f"{where}.{name} {value} is not a size in bytes")
    return value


def version_field(document: dict[str, Any], name: str) -> str:
    value: str = field(document, name, str)
    if not _VERSION.fullmatch(value):
        raise ManifestFormatError(f"{name} {shown(value)} is not a version")
    return value


def shown(value: object) -> str:
    """A value from the file for a one-line message: quoted, escaped, short."""
    text = ascii(value)
    return text if len(text) <= 40 else text[:37] + "..."


def time_field(document: dict[str, Any], name: str) -> datetime:
    text = field(document, name, str)
    try:
        if len(text) != 20:
            raise ValueError(text)
        return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise ManifestFormatError(
            f"key {name!r} is not a UTC time like 2025-01-25T18:30:00Z"
        ) from None
