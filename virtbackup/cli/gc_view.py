"""What `virtbackup gc` (and the gc after `prune` and `all`) prints: text and JSON."""

import json
from dataclasses import asdict
from typing import Any

import click

from virtbackup.core.sizes import human_size
from virtbackup.engine.stores.gc import GcResult
from virtbackup.engine.stores.remote_gc import RemoteGcResult

MISSING_SHOWN = 20  # lines of referenced-but-missing chunks in the text output


def gc_lines(result: GcResult, where: str, grace: float) -> list[str]:
    """One paragraph: what was (or would be) removed and kept, and what is wrong."""
    removed = f"{result.removed} chunks ({human_size(result.removed_bytes)})"
    kept = f"{result.kept} chunks ({human_size(result.kept_bytes)})"
    if result.dry_run:
        lines = [
            f"gc of {where} (dry run: nothing removed or touched): would remove {removed}, "
            f"keep {kept}",
            f"  would free up to {human_size(result.removed_bytes)}: chunks no remaining "
            f"backup references and unused for {grace:g} s; one a backup starting "
            "meanwhile uses again is kept",
        ]
    else:
        lines = [f"gc of {where}: removed {removed}, kept {kept}"]
    if result.temporaries:
        verb = "would remove" if result.dry_run else "removed"
        lines.append(f"  {verb} {result.temporaries} unfinished chunk files of dead backups")
    if result.restored:
        lines.append(f"  put back {result.restored} chunks an interrupted gc had hidden")
    if result.live_writers:
        lines.append(f"  {result.live_writers} backups were running: what they use is kept")
    for missing in result.missing[:MISSING_SHOWN]:
        lines.append(f"  MISSING: chunk {missing.chunk} of backup {missing.backup}")
    if result.missing_count:
        lines.append(
            f"  {result.missing_count} referenced chunks are missing: those backups cannot "
            "be restored whole; run 'virtbackup verify' on them"
        )
    return lines


def print_gc(result: GcResult, where: str, grace: float) -> None:
    click.echo("\n".join(gc_lines(result, where, grace)))


def gc_as_json(result: GcResult, where: str, grace: float) -> dict[str, Any]:
    return {
        "dest": where,
        "dry_run": result.dry_run,
        "grace_seconds": grace,
        "backups": result.backups,
        "removed_chunks": result.removed,
        "removed_bytes": result.removed_bytes,
        "kept_chunks": result.kept,
        "kept_bytes": result.kept_bytes,
        "temporary_files_removed": result.temporaries,
        "restored_chunks": result.restored,
        "running_backups": result.live_writers,
        "missing_count": result.missing_count,
        "missing": [{"backup": m.backup, "chunk": m.chunk} for m in result.missing],
    }


def print_remote_gc(result: RemoteGcResult, where: str, as_json: bool) -> None:
    """What `gc --remote` removed (or would remove) from the remote repository."""
    if as_json:
        click.echo(json.dumps({"remote": where, **asdict(result)}, indent=2))
        return
    verb = "would remove" if result.dry_run else "removed"
    click.echo(
        f"gc of the remote repository at {where}: {verb} {result.removed} chunks "
        f"({human_size(result.removed_bytes)}); kept {result.named} that backups name and "
        f"{result.young} younger than the grace"
        + (f"; put back {result.put_back} a new backup names" if result.put_back else "")
    )
