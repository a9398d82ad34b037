"""Offsite copies through rclone: one remote ("name:path" in an rclone config file).

Every call runs the rclone program through the runner with an argument list, so `-v`
shows each command and tests can watch them. Secrets (passwords, keys) live only in the
rclone config file, never in an argument list or a log line. Every failure becomes one
`RemoteError` line: what failed and rclone's last line on stderr.

Behaviour of rclone 1.60 this module relies on:
- `lsjson` gives `Path`, `Size` (-1 for directories) and `IsDir`; a missing directory is
  exit status 3 on sftp and ftp, and an empty listing on S3 (which has no directories).
- `cat` of a missing file is exit status 3 on sftp and ftp but empty output and status 0
  on S3, so downloads ask `lsjson --stat` first.
- `copy` skips files whose size and modification time (or size alone, where the backend
  keeps no time) already match: a re-run after a killed upload resumes, file by file.
- `rcat` keeps up to 100 KiB in memory and uploads it in one request; a longer stream is
  written as it comes (sftp, ftp: straight into the target file; S3: a multipart upload,
  whose object then has no MD5, so `hashsum md5` gives nothing for it).
"""

import json
import logging
import re
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from virtbackup.adapters import runner
from virtbackup.core.backup_errors import RemoteError

log = logging.getLogger(__name__)

RCLONE = "rclone"

# rclone's exit statuses (rclone docs, "Exit Code").
DIRECTORY_NOT_FOUND = 3
FILE_NOT_FOUND = 4

# "name:" starts every remote; rclone allows letters, digits, "_", "-", "." and inner
# spaces in a name. On-the-fly remotes (":sftp,host=...:") are refused: their options,
# secrets included, would be part of the argument list.
_LOCATION = re.compile(r"^[\w.-][\w. -]*:")

# "2024/05/01 10:00:00 ERROR : disk.img: Failed to copy: ..." -> "disk.img: Failed to copy: ..."
_RECORD_START = re.compile(r"\n(?=\d{4}/\d\d/\d\d \d\d:\d\d:\d\d )")
_LOG_PREFIX = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\s+(?:[A-Z]+\s*:\s+)?")


@dataclass(frozen=True)
class Remote:
    """Where offsite copies go, and how rclone is to reach it."""

    location: str  # rclone "name:path", e.g. "offsite:virtbackup" or "offsite:"
    config: Path | None = None  # rclone config file (--config); None: rclone's default
    bwlimit: str | None = None  # rclone --bwlimit value, e.g. "10M"
    retries: int = 3  # rclone --retries; low-level retries follow from it

    def path(self, *parts: str) -> str:
        """The location joined with `parts` by "/", without empty or doubled slashes."""
        segments = [segment for part in parts for segment in part.split("/") if segment]
        if not segments:
            return self.location
        joined = "/".join(segments)
        if self.location.endswith((":", "/")):
            return self.location + joined
        return f"{self.location}/{joined}"


@dataclass(frozen=True)
class RemoteEntry:
    """One file or directory of a remote listing."""

    path: str  # relative to the listed path
    size: int  # -1 for directories
    is_dir: bool


# -- running rclone --------------------------------------------------------------------


def _argv(remote: Remote, command: str, *args: str, transfer: bool = False) -> list[str]:
    """The argument list of one rclone call: options every call needs, plus the bandwidth
    limit for calls that move file contents."""
    argv = [RCLONE, command, *args, "--ask-password=false"]  # never prompt under cron
    if remote.config is not None:
        argv += ["--config", str(remote.config)]
    # A whole operation is retried `retries` times; each request inside it a few times more
    # (rclone's default is 10 per request), so a dead remote fails within a bounded time.
    argv += [f"--retries={remote.retries}", f"--low-level-retries={max(1, 3 * remote.retries)}"]
    if transfer and remote.bwlimit:
        argv += ["--bwlimit", remote.bwlimit]
    return argv


def _reason(stderr: bytes, returncode: int) -> str:
    """rclone's last message on stderr, as one line without its time stamp, or how it
    ended. A killed rclone says so first: its last message may be a harmless complaint
    from before (on ftp, "SetModTime is not supported" is logged as an error on every
    successful copy)."""
    # A record may go on over several lines (S3: "BadRequest: ...\n\tstatus code: 400").
    records = _RECORD_START.split(stderr.decode(errors="replace").strip())
    last = _LOG_PREFIX.sub("", " ".join(records[-1].split()))
    if returncode < 0:
        return f"killed by signal {-returncode}" + (f" (last message: {last})" if last else "")
    return last or f"exit status {returncode}"


def _failure(what: str, stderr: bytes, returncode: int) -> RemoteError:
    return RemoteError(f"rclone {what} failed: {_reason(stderr, returncode)}")


def _rclone(
    remote: Remote,
    args: Sequence[str],
    *,
    what: str,
    transfer: bool = False,
    tolerate: Sequence[int] = (),
    input: bytes = b"",
) -> subprocess.CompletedProcess[bytes]:
    """Run `rclone ARGS`; RemoteError "rclone WHAT failed: ..." unless it exits 0 or with
    a status in `tolerate`. Its stdin is `input`, never ours."""
    command, *rest = args
    result = runner.run(_argv(remote, command, *rest, transfer=transfer), check=False, input=input)
    if result.returncode != 0 and result.returncode not in tolerate:
        raise _failure(what, result.stderr, result.returncode)
    return result


# -- checking and listing --------------------------------------------------------------


def check_remote(remote: Remote) -> None:
    """Fail early, in one line, when offsite copies could not work: rclone missing, a
    location that names no remote, a missing config file, a remote that does not answer.
    The base path is created when missing, so a first run needs no manual step."""
    check_config(remote)
    _rclone(remote, ["mkdir", remote.location], what=f"mkdir {remote.location}")
    list_entries(remote, "")


def check_config(remote: Remote) -> None:
    """The checks of check_remote that need no network: rclone installed, a location of
    the form name:path, the config file there and the remote defined in it."""
    runner.require_program(RCLONE)
    if not _LOCATION.match(remote.location):
        raise RemoteError(f"remote location {remote.location!r} is not of the form name:path")
    if remote.config is not None and not remote.config.is_file():
        raise RemoteError(f"rclone config file {remote.config} does not exist")
    name = remote.location.split(":", 1)[0] + ":"
    known = (
        _rclone(remote, ["listremotes"], what="listremotes").stdout.decode(errors="replace").split()
    )
    if name not in known:
        where = remote.config or "rclone's default config file"
        raise RemoteError(f"remote {name} is not defined in {where}")


def list_entries(remote: Remote, path: str, recursive: bool = False) -> list[RemoteEntry]:
    """Files and directories under `path`; a directory that does not exist is empty."""
    target = remote.path(path)
    args = ["lsjson", target, "--no-modtime", "--no-mimetype"]
    if recursive:
        args.append("--recursive")
    result = _rclone(remote, args, what=f"lsjson {target}", tolerate=[DIRECTORY_NOT_FOUND])
    if result.returncode == DIRECTORY_NOT_FOUND:
        return []
    return [_entry(item) for item in _json(result.stdout, f"lsjson {target}")]


def list_file_sizes(remote: Remote, path: str, filters: Sequence[str] = ()) -> dict[str, int]:
    """Every file below `path` (recursively) and its size, restricted by the rclone filter
    rules `filters` when given ("+ /ab/*", "- **"); a directory that does not exist is
    empty. One listing request per directory page: on S3 a thousand names each."""
    target = remote.path(path)
    args = ["lsf", target, "--recursive", "--files-only", "--format", "sp", "--separator", " "]
    args += [arg for rule in filters for arg in ("--filter", rule)]
    result = _rclone(remote, args, what=f"lsf {target}", tolerate=[DIRECTORY_NOT_FOUND])
    if result.returncode == DIRECTORY_NOT_FOUND:
        return {}
    sizes = {}
    for line in result.stdout.decode(errors="replace").splitlines():
        size, _, name = line.partition(" ")
        if name and size.isdigit():
            sizes[name] = int(size)
    return sizes


def list_file_times(remote: Remote, path: str) -> dict[str, tuple[int, float]]:
    """Every file below `path` (recursively): its size and modification time (seconds
    since the epoch, as the backend keeps it: the source file's on S3 and SFTP, where
    rclone sets it; the server's upload time on FTP); a missing directory is empty."""
    target = remote.path(path)
    args = ["lsjson", target, "--recursive", "--files-only", "--no-mimetype"]
    result = _rclone(remote, args, what=f"lsjson {target}", tolerate=[DIRECTORY_NOT_FOUND])
    if result.returncode == DIRECTORY_NOT_FOUND:
        return {}
    found = {}
    for item in _json(result.stdout, f"lsjson {target}"):
        try:
            when = datetime.fromisoformat(str(item["ModTime"])).timestamp()
        except ValueError:
            raise RemoteError(f"rclone lsjson {target} gave a time it cannot read") from None
        found[str(item["Path"])] = (int(item["Size"]), when)
    return found


def _entry(item: dict[str, Any]) -> RemoteEntry:
    return RemoteEntry(path=str(item["Path"]), size=int(item["Size"]), is_dir=bool(item["IsDir"]))


def _json(output: bytes, what: str) -> Any:
    try:
        return json.loads(output)
    except ValueError as err:
        raise RemoteError(f"rclone {what} gave output that is not JSON: {err}") from err


def _stat(remote: Remote, path: str) -> RemoteEntry | None:
    """The file or directory at `path`, None when there is none. On S3 a missing path
    reads as an empty directory."""
    target = remote.path(path)
    result = _rclone(
        remote,
        ["lsjson", "--stat", "--no-modtime", "--no-mimetype", target],
        what=f"lsjson --stat {target}",
        tolerate=[DIRECTORY_NOT_FOUND, FILE_NOT_FOUND],
    )
    if result.returncode != 0:
        return None
    return _entry(_json(result.stdout, f"lsjson --stat {target}"))


def _require_file(remote: Remote, path: str) -> None:
    """RemoteError unless `path` is a file: `rclone cat` would read a missing S3 object
    as empty, and a directory as all its files one after the other."""
    entry = _stat(remote, path)
    if entry is None or entry.is_dir:
        raise RemoteError(f"{remote.path(path)} is not a file on the remote")


# -- copying whole files ---------------------------------------------------------------


def copy_dir(remote: Remote, local_dir: Path, path: str, exclude: Sequence[str] = ()) -> None:
    """Copy the files of `local_dir` to `path` (rclone copy; nothing is deleted there).

    Files already on the remote with the same size and modification time are skipped, so
    running it again after an interrupted upload resumes it, at file granularity: files
    that arrived are kept, a file cut off in the middle is sent again from its start.
    `exclude` takes rclone filter patterns ("*.partial", "/tmp/**")."""
    target = remote.path(path)
    args = ["copy", str(local_dir), target, *_excludes(exclude)]
    _rclone(remote, args, what=f"copy to {target}", transfer=True)


def copy_listed(
    remote: Remote,
    local_dir: Path,
    path: str,
    names: Sequence[str],
    transfers: int = 8,
    keep: bool = False,
) -> None:
    """Copy the files `names` (relative to `local_dir`) to `path`, `transfers` at a time.

    The remote is not listed first (--no-traverse): each named file is looked up on its
    own, and one whose size and modification time match is skipped, so the cost follows
    the number of names, not of what the remote holds. A file cut off by a killed upload
    has another size and is sent again. With `keep`, a file already there is never
    replaced."""
    extra = ["--ignore-existing"] if keep else []
    _copy_named(remote, str(local_dir), remote.path(path), names, transfers, extra=extra)


def fetch_listed(
    remote: Remote, path: str, local_dir: Path, names: Sequence[str], transfers: int = 8
) -> None:
    """Copy the files `names` (relative to `path` on the remote) into `local_dir`,
    `transfers` at a time; RemoteError when one of them is not there."""
    _copy_named(remote, remote.path(path), str(local_dir), names, transfers)
    missing = [name for name in names if not (local_dir / name).is_file()]
    if missing:
        raise RemoteError(
            f"{remote.path(path, missing[0])} is not on the remote"
            + (f" (nor {len(missing) - 1} more)" if len(missing) > 1 else "")
        )


def copy_within(
    remote: Remote,
    path: str,
    target: str,
    names: Sequence[str],
    transfers: int = 8,
    move: bool = False,
) -> None:
    """Copy (with `move`, move) the files `names` from `path` to `target` on the same
    remote, server-side where the backend can. A named file that is not there is
    skipped; a move removes each source only once its copy is whole."""
    command = "move" if move else "copy"
    _copy_named(remote, remote.path(path), remote.path(target), names, transfers, command=command)


def _copy_named(
    remote: Remote,
    source: str,
    target: str,
    names: Sequence[str],
    transfers: int,
    command: str = "copy",
    extra: Sequence[str] = (),
) -> None:
    if not names:
        return
    with _files_from(names) as listing:
        args = [command, source, target, *listing, "--no-traverse", *extra]
        args += [f"--transfers={transfers}", f"--checkers={transfers}"]
        _rclone(remote, args, what=f"copy to {target}", transfer=True)


@contextmanager
def _files_from(names: Sequence[str]) -> Iterator[list[str]]:
    """The options that restrict an rclone command to the files `names`, one a line in
    a temporary file (a long list would not fit an argument list)."""
    with tempfile.NamedTemporaryFile("w", prefix="vb-files-from-", suffix=".txt") as listing:
        listing.write("".join(f"{name}\n" for name in names))
        listing.flush()
        yield ["--files-from", listing.name]


def copy_file(remote: Remote, local_file: Path, path: str) -> None:
    """Copy one file to `path`, which names the file (rclone copyto)."""
    target = remote.path(path)
    _rclone(remote, ["copyto", str(local_file), target], what=f"copyto {target}", transfer=True)


def _excludes(patterns: Sequence[str]) -> list[str]:
    return [arg for pattern in patterns for arg in ("--exclude", pattern)]


def check_dir(remote: Remote, local_dir: Path, path: str, exclude: Sequence[str] = ()) -> None:
    """RemoteError naming each file of `local_dir` that is missing or different at `path`.

    rclone compares sizes, and hashes where the backend keeps one (not on ftp, and not
    for S3 objects uploaded by a long `upload_stream`); extra remote files are ignored."""
    target = remote.path(path)
    args = ["check", str(local_dir), target, "--one-way", "--combined", "-", *_excludes(exclude)]
    result = _rclone(remote, args, what=f"check {target}", tolerate=[1])
    problems = _check_problems(result.stdout.decode(errors="replace"))
    if problems:
        shown = ", ".join(problems[:10]) + (
            f" and {len(problems) - 10} more" if len(problems) > 10 else ""
        )
        raise RemoteError(f"copy at {target} does not match {local_dir}: {shown}")
    if result.returncode != 0:
        raise _failure(f"check {target}", result.stderr, result.returncode)


# `rclone check --combined` marks each file: "=" same, "*" differs, "+" only in the
# source (missing on the remote), "-" only on the remote, "!" could not be read.
_CHECK_MARKS = {"*": "differs", "+": "missing", "!": "unreadable"}


def _check_problems(combined: str) -> list[str]:
    problems = []
    for line in combined.splitlines():
        mark, _, name = line.partition(" ")
        if mark in _CHECK_MARKS:
            problems.append(f"{name} ({_CHECK_MARKS[mark]})")
    return problems


# -- hashes ----------------------------------------------------------------------------


def hash_types(remote: Remote) -> list[str]:
    """The hashes the backend can give without downloading, as rclone names them ("md5",
    "sha1"); empty when there are none (ftp)."""
    what = f"backend features {remote.location}"
    result = _rclone(remote, ["backend", "features", remote.location], what=what)
    features = _json(result.stdout, what)
    return [str(name).lower() for name in features.get("Hashes") or []]


def hashsum(remote: Remote, hash_type: str, path: str) -> str | None:
    """The hex hash of one file as the backend keeps it; None when it has none for this
    file (an unsupported hash type, or an S3 object uploaded in parts by a stream)."""
    _require_file(remote, path)
    target = remote.path(path)
    result = _rclone(
        remote, ["hashsum", hash_type.lower(), target], what=f"hashsum {target}", tolerate=[1]
    )
    if result.returncode != 0:
        if b"hash type not supported" in result.stderr:
            return None
        raise _failure(f"hashsum {target}", result.stderr, result.returncode)
    words = result.stdout.decode(errors="replace").split()
    digest = words[0].lower() if words else ""
    return digest if re.fullmatch(r"[0-9a-f]+", digest) else None


# -- streams ---------------------------------------------------------------------------


@contextmanager
def _spawned(
    argv: list[str], *, stdin: int | None = None, stdout: int | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], IO[bytes]]]:
    """rclone started with its stderr in a temporary file (a pipe nobody reads could fill
    up and stall it); when the block is left the process is gone, killed if need be."""
    with tempfile.TemporaryFile() as errors:
        process = runner.spawn(argv, stdin=stdin, stdout=stdout, stderr=errors)
        try:
            yield process, errors
        finally:
            _kill(process)
            for pipe in (process.stdin, process.stdout):
                _close_quietly(pipe)


def _kill(process: subprocess.Popen[bytes], grace: float = 0) -> None:
    """End rclone, after `grace` seconds for one that is on its way out by itself."""
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _close_quietly(pipe: IO[bytes] | None) -> None:
    """Close a pipe whose other end may be gone (buffered data then cannot be written)."""
    if pipe is not None:
        try:
            pipe.close()
        except OSError:
            pass


def _finish(process: subprocess.Popen[bytes], errors: IO[bytes], what: str) -> None:
    """Wait for rclone; RemoteError with its last stderr line unless it succeeded."""
    returncode = process.wait()
    if returncode != 0:
        errors.seek(0)
        raise _failure(what, errors.read(), returncode)


@contextmanager
def upload_stream(remote: Remote, path: str) -> Iterator[BinaryIO]:
    """A pipe whose bytes become the file `path` (rclone rcat).

    Write with `write()` or to its `fileno()`; flush before switching from one to the
    other. Leaving the block normally ends the file and waits for the upload; an
    exception kills rclone first (closing the pipe would finish a truncated file) and
    removes what it may have left at `path`. A pipe that breaks because rclone gave up
    becomes a RemoteError with rclone's reason."""
    target = remote.path(path)
    what = f"rcat {target}"
    with _spawned(_argv(remote, "rcat", target, transfer=True), stdin=subprocess.PIPE) as (
        process,
        errors,
    ):
        pipe = cast(BinaryIO, process.stdin)
        try:
            yield pipe
            pipe.close()
        except BaseException as err:
            gave_up = isinstance(err, BrokenPipeError)  # rclone closed its end
            _kill(process, grace=10 if gave_up else 0)
            _close_quietly(pipe)
            _remove_leftover(remote, path)
            if gave_up:
                _finish(process, errors, what)
            raise
        _finish(process, errors, what)


def _remove_leftover(remote: Remote, path: str) -> None:
    """Remove a cut-off upload; failing to is worth a warning, not hiding the first error."""
    try:
        delete_file(remote, path)
    except RemoteError as err:
        log.warning("could not remove the incomplete upload: %s", err)


@contextmanager
def download_stream(remote: Remote, path: str) -> Iterator[BinaryIO]:
    """A pipe giving the bytes of the file `path` (rclone cat).

    A missing file raises RemoteError on entry. Read it to its end: then leaving the
    block raises RemoteError if rclone failed on the way (the pipe just ends early).
    Leaving before the end is no error; rclone is killed."""
    target = remote.path(path)
    _require_file(remote, path)
    with _spawned(_argv(remote, "cat", target, transfer=True), stdout=subprocess.PIPE) as (
        process,
        errors,
    ):
        pipe = cast(BinaryIO, process.stdout)
        yield pipe
        if pipe.read(1):
            return  # the caller stopped early on purpose
        _finish(process, errors, f"cat {target}")


def read_text(remote: Remote, path: str) -> str:
    """The file `path` as UTF-8 text (small files: manifests, markers)."""
    with download_stream(remote, path) as pipe:
        data = pipe.read()
    return data.decode()


def write_text(remote: Remote, path: str, text: str) -> None:
    """Write `text` as the file `path`, replacing it."""
    target = remote.path(path)
    _rclone(remote, ["rcat", target], what=f"rcat {target}", transfer=True, input=text.encode())


# -- removing --------------------------------------------------------------------------


def purge(remote: Remote, path: str) -> None:
    """Remove the directory `path` and everything in it; a missing one is fine."""
    target = remote.path(path)
    _rclone(remote, ["purge", target], what=f"purge {target}", tolerate=[DIRECTORY_NOT_FOUND])


def clock_offset(remote: Remote, path: str) -> float:
    """Seconds the remote's clock runs ahead of this host's (negative: behind), to about
    a second: a small file `path` is written, the time the server gave it is read back
    (--use-server-modtime), and the file removed. Backends that keep the time rclone
    sets rather than their own (SFTP, local) answer with this host's time: about 0."""
    before = datetime.now().timestamp()
    write_text(remote, path, "")
    after = datetime.now().timestamp()
    try:
        target = remote.path(path)
        args = ["lsjson", target, "--use-server-modtime", "--no-mimetype"]
        result = _rclone(remote, args, what=f"lsjson {target}")
        (item,) = _json(result.stdout, f"lsjson {target}")
        written = datetime.fromisoformat(str(item["ModTime"])).timestamp()
    except ValueError:
        raise RemoteError(f"rclone lsjson {remote.path(path)} gave no time it can read") from None
    finally:
        delete_file(remote, path)
    # S3 keeps whole seconds: the upload happened somewhere in [before, after].
    return written - (before + after) / 2


def delete_listed(remote: Remote, path: str, names: Sequence[str]) -> None:
    """Remove the files `names` (relative to `path`), several at a time; one that is
    already gone is fine."""
    if not names:
        return
    target = remote.path(path)
    with _files_from(names) as listing:
        _rclone(remote, ["delete", target, *listing, "--no-traverse"], what=f"delete in {target}")


def delete_file(remote: Remote, path: str) -> None:
    """Remove the file `path`; a missing one is fine, a directory is left alone (on S3 a
    missing path looks like one). rclone deletefile gives a missing file only status 1,
    after its retries, so look first."""
    entry = _stat(remote, path)
    if entry is None or entry.is_dir:
        return
    target = remote.path(path)
    _rclone(remote, ["deletefile", target], what=f"deletefile {target}")
