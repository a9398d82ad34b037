"""`verified.json`, written by `verify` beside a backup's manifest (a backup's data files
are never changed after the rename; this record is the only file added later)::

    {"format_version": 1, "verified_at": "...Z", "ok": true, "problem": null,
     "tool_version": "0.1.0"}
"""

import json
from dataclasses import dataclass
from datetime import datetime

from virtbackup import FORMAT_VERSION
from virtbackup.core.json_fields import (
    ManifestFormatError,
    field,
    format_time,
    load_object,
    time_field,
    version_field,
)

MAX_PROBLEM = 4096


@dataclass(frozen=True)
class VerifyRecord:
    verified_at: datetime
    ok: bool
    problem: str | None
    tool_version: str


def build_verify_record(record: VerifyRecord) -> str:
    document = {
        "format_version": FORMAT_VERSION,
        "verified_at": format_time(record.verified_at),
        "ok": record.ok,
        "problem": record.problem,
        "tool_version": record.tool_version,
    }
    return json.dumps(document, indent=2) + "\n"


def parse_verify_record(text: str) -> VerifyRecord:
    document = load_object(text)
    version = field(document, "format_version", int)
    if version != FORMAT_VERSION:
        raise ManifestFormatError(f"verify record version {version} is not supported")
    problem = document.get("problem")
    if problem is not None:
        problem = field(document, "problem", str)
        if len(problem) > MAX_PROBLEM:
            raise ManifestFormatError("'problem' is too long")
    return VerifyRecord(
        verified_at=time_field(document, "verified_at"),
        ok=field(document, "ok", bool),
        problem=problem,
        tool_version=version_field(document, "tool_version"),
    )
