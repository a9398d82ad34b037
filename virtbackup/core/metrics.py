"""The metrics file: Prometheus text exposition format, for node_exporter's textfile
collector (`--collector.textfile.directory`), written after every `backup` and `all`.

Every family has HELP and TYPE lines; names follow Prometheus' conventions (the
`virtbackup_` prefix, base units in the name: `_seconds`, `_bytes`,
`_timestamp_seconds`). Per domain (label `domain`):

    virtbackup_domain_last_success_timestamp_seconds   when the newest good backup ended
    virtbackup_domain_last_attempt_timestamp_seconds   when the last attempt ended
    virtbackup_domain_last_attempt_success             1 when it was ok, else 0
    virtbackup_domain_last_attempt_result{result}      1 for its result, 0 for the others
    virtbackup_domain_last_attempt_duration_seconds
    virtbackup_domain_last_attempt_read_bytes          uncompressed bytes of its disks
    virtbackup_domain_last_attempt_stored_bytes        bytes it wrote to the store
    virtbackup_domain_backups                          complete backups in the store

Per store (labels `dest` and `store`, the kind of store: "directory" for DEST/<domain>/
<stamp>/; a deduplicating repository adds its own series under the same names with its
own kind, and families of its own for what only it has):

    virtbackup_store_backups
    virtbackup_store_stored_bytes

Per deduplicating repository (label `dest`; `encrypted` "false" for chunks/, "true" for
sealed-chunks/, whose backups' logical size is encrypted):

    virtbackup_repository_chunks{encrypted}          chunk files
    virtbackup_repository_stored_bytes{encrypted}    bytes of the chunk files
    virtbackup_repository_backups{encrypted}         backups with disks in it
    virtbackup_repository_logical_bytes              bytes of those backups' disks

A domain that has neither a record nor a backup has no series; `virtbackup check`
names it.
"""

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from virtbackup.core.run_record import RESULTS, LastAttempt


@dataclass(frozen=True)
class DomainMetrics:
    domain: str
    attempt: LastAttempt | None  # the last attempt's record, when there is one
    newest_finished: float | None  # Unix time the newest complete backup ended
    backups: int  # complete backups in the store


@dataclass(frozen=True)
class StoreMetrics:
    dest: str
    kind: str  # "directory"
    backups: int
    stored_bytes: int


@dataclass(frozen=True)
class RepositoryMetrics:
    dest: str
    chunks: int
    stored_bytes: int
    backups: int
    logical_bytes: int
    encrypted_chunks: int
    encrypted_bytes: int
    encrypted_backups: int


Sample = tuple[dict[str, str], float]


def render_metrics(
    domains: Sequence[DomainMetrics],
    stores: Sequence[StoreMetrics],
    repositories: Sequence[RepositoryMetrics] = (),
) -> str:
    attempts = [(d.domain, d.attempt) for d in domains if d.attempt is not None]
    families = [
        _family(
            "domain_last_success_timestamp_seconds",
            "Unix time the newest successful backup of the domain ended.",
            [({"domain": d.domain}, s) for d in domains if (s := _last_success(d)) is not None],
        ),
        _family(
            "domain_last_attempt_timestamp_seconds",
            "Unix time the last backup attempt of the domain ended.",
            [({"domain": n}, a.finished) for n, a in attempts],
        ),
        _family(
            "domain_last_attempt_success",
            "1 when the last backup attempt of the domain succeeded, else 0.",
            [({"domain": n}, float(a.result == "ok")) for n, a in attempts],
        ),
        _family(
            "domain_last_attempt_result",
            "The result of the last backup attempt of the domain: 1 for it, 0 for the others.",
            [
                ({"domain": n, "result": r}, float(a.result == r))
                for n, a in attempts
                for r in RESULTS
            ],
        ),
        _family(
            "domain_last_attempt_duration_seconds",
            "How long the last backup attempt of the domain took.",
            [({"domain": n}, a.seconds) for n, a in attempts],
        ),
        _family(
            "domain_last_attempt_read_bytes",
            "Uncompressed bytes of the disks the last backup attempt of the domain read.",
            [({"domain": n}, float(a.read)) for n, a in attempts],
        ),
        _family(
            "domain_last_attempt_stored_bytes",
            "Bytes the last backup attempt of the domain wrote to the store.",
            [({"domain": n}, float(a.stored)) for n, a in attempts],
        ),
        _family(
            "domain_backups",
            "Complete backups of the domain in the store.",
            [({"domain": d.domain}, float(d.backups)) for d in domains],
        ),
        _family(
            "store_backups",
            "Complete backups in the store.",
            [({"dest": s.dest, "store": s.kind}, float(s.backups)) for s in stores],
        ),
        _family(
            "store_stored_bytes",
            "Bytes the backups in the store take.",
            [({"dest": s.dest, "store": s.kind}, float(s.stored_bytes)) for s in stores],
        ),
        _family(
            "repository_chunks",
            "Chunk files in the deduplicating repository.",
            _by_encryption(repositories, lambda r: (r.chunks, r.encrypted_chunks)),
        ),
        _family(
            "repository_stored_bytes",
            "Bytes of the chunk files in the deduplicating repository.",
            _by_encryption(repositories, lambda r: (r.stored_bytes, r.encrypted_bytes)),
        ),
        _family(
            "repository_backups",
            "Backups with disks in the deduplicating repository.",
            _by_encryption(repositories, lambda r: (r.backups, r.encrypted_backups)),
        ),
        _family(
            "repository_logical_bytes",
            "Bytes of the disks of the unencrypted repository backups (what restore writes).",
            [({"dest": r.dest}, float(r.logical_bytes)) for r in repositories],
        ),
    ]
    return "".join(families)


def _by_encryption(
    repositories: Sequence[RepositoryMetrics],
    figures: Callable[[RepositoryMetrics], tuple[int, int]],
) -> list[Sample]:
    samples = []
    for repository in repositories:
        plain, encrypted = figures(repository)
        samples.append(({"dest": repository.dest, "encrypted": "false"}, float(plain)))
        samples.append(({"dest": repository.dest, "encrypted": "true"}, float(encrypted)))
    return samples


def _last_success(domain: DomainMetrics) -> float | None:
    """The later of the recorded last success and the newest backup in the store (made
    by a run that kept no record, or copied in)."""
    times = [domain.newest_finished]
    if domain.attempt is not None:
        times.append(domain.attempt.last_success)
    known = [t for t in times if t is not None]
    return max(known) if known else None


def _family(name: str, help_text: str, samples: Iterable[Sample]) -> str:
    full = f"virtbackup_{name}"
    lines = [f"# HELP {full} {help_text}", f"# TYPE {full} gauge"]
    for labels, value in samples:
        rendered = ",".join(f'{key}="{escape_label(text)}"' for key, text in labels.items())
        lines.append(f"{full}{{{rendered}}} {value!r}")
    return "\n".join(lines) + "\n"


def escape_label(value: str) -> str:
    """A label value in the text format: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
