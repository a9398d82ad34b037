"""The local store: DEST/<domain>/<UTC stamp>/ on a filesystem of this host.

A backup is written into the hidden DEST/<domain>/.<stamp>.partial, whose directory is
flock'ed while the writing process lives; files and directories are fsynced, then the
directory is renamed into place. An earlier backup is never opened for writing (only
`verified.json` is added by verify). A partial directory whose lock is free belongs to a
run that died (SIGKILL, power loss) and is removed by `remove_partials`, which the next
backup and the `clean` command call. Files are 0600, directories 0700.

Others must not be able to change what is written: a DEST that group or others may write
(without the sticky bit of /tmp) and a domain directory not owned by us are refused
before a backup starts. What is read from a backup is untrusted: every file is opened
without following a link and only when it is a regular file (a FIFO would block the
read, a link could make a crafted backup read, or show, a file of the host).
"""

import errno
import fcntl
import logging
import os
import re
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from virtbackup.adapters.journal import others_can_replace
from virtbackup.adapters.no_follow import (
    is_held,
    is_real_dir,
    open_dir,
    read_regular_file,
    unlink_at,
)
from virtbackup.core.backup_errors import (
    CorruptBackup,
    StoreError,
    UnsafeDestination,
    write_error,
)
from virtbackup.core.verify_record import VerifyRecord, build_verify_record
from virtbackup.engine.stores.store import (
    VERIFIED,
    AbortUnlessCommitted,
    BackupInfo,
    allocate_stamp,
    check_backup_name,
    check_domain_name,
    check_stamp,
    describe_backup,
    is_domain_dir_name,
    is_stamp,
    missing_file,
    read_limit,
)

_PARTIAL = re.compile(r"^\.(\d{8}T\d{6}Z(-\d+)?)\.partial$")
# A backup being removed by retention: renamed first, so it never looks complete.
_DELETING = re.compile(r"^\.(\d{8}T\d{6}Z(-\d+)?)\.deleting$")
FILE_MODE = 0o600
DIR_MODE = 0o700

log = logging.getLogger(__name__)


class LocalStore:
    """Backups in the directory DEST of this host."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.label = str(dest)

    def check_writable(self) -> None:
        """Raise a one-line StoreError unless backups can be written under DEST."""
        if not self.dest.is_dir():
            what = "is not a directory" if self.dest.exists() else "does not exist"
            raise StoreError(
                f"backup destination {self.dest} {what}", "create it or choose another --dest"
            )
        if os.statvfs(self.dest).f_flag & os.ST_RDONLY:
            raise StoreError(f"backup destination {self.dest} is on a read-only filesystem")
        if not os.access(self.dest, os.W_OK | os.X_OK):
            raise StoreError(f"backup destination {self.dest} is not writable")
        if others_can_replace(os.stat(self.dest)):
            raise UnsafeDestination(
                f"backup destination {self.dest} is writable by group or others",
                f"run 'chmod go-w {self.dest}', or 'chmod +t {self.dest}' to share it as /tmp is",
            )

    def check_domain_dir(self, domain: str) -> None:
        """Refuse (UnsafeDestination, exit 2) a domain directory owned by another user:
        its owner could chmod it back, swap stamps or plant backups in it."""
        domain_dir = self.dest / domain
        try:
            info = os.lstat(domain_dir)
        except FileNotFoundError:
            return  # created by us, 0700
        except OSError as err:
            raise write_error(err, domain_dir) from None
        uid = os.geteuid()
        if stat.S_ISDIR(info.st_mode) and info.st_uid != uid:
            owner = "root" if uid == 0 else str(uid)
            raise UnsafeDestination(
                f"{domain_dir} is owned by uid {info.st_uid}, not by us",
                f"remove it, or run 'chown {owner} {domain_dir}' if what it holds is ours",
            )

    def begin(self, domain: str, now: datetime, stamp: str | None = None) -> "LocalPartial":
        """Create the partial directory of a new backup of `domain` started at `now`;
        with `stamp`, of a backup that keeps that stamp (an export: StoreError when the
        store has a backup of that stamp already)."""
        self.check_writable()
        check_domain_name(domain)
        if stamp is not None:
            check_stamp(stamp)
        domain_dir = self.dest / domain
        try:
            domain_dir.mkdir(mode=DIR_MODE, exist_ok=True)
            if not is_real_dir(domain_dir):
                raise StoreError(
                    f"{domain_dir} is a symbolic link or not a directory",
                    "remove it: backups are written only into a directory of DEST itself",
                )
            self.check_domain_dir(domain)
            os.chmod(domain_dir, DIR_MODE)
            self.remove_partials(domain)
            if stamp is None:
                stamp = allocate_stamp(domain, now, lambda stamp: _claim(domain_dir, stamp))
            elif not _claim(domain_dir, stamp):
                raise StoreError(
                    f"{domain_dir / stamp} exists already", "export into another directory"
                )
            return LocalPartial(domain_dir / f".{stamp}.partial", domain_dir / stamp)
        except OSError as err:
            raise write_error(err, domain_dir) from None

    def remove_partials(self, domain: str | None = None, *, dry_run: bool = False) -> list[Path]:
        """Remove partial directories left by dead runs (or, in a dry run, list them);
        skip those a live run holds. Nothing is reached through a symbolic link: the
        domain directory is opened without following one and each leftover is removed
        relative to it."""
        removed = []
        for domain_dir in self._domain_dirs(domain):
            try:
                domain_fd = open_dir(domain_dir)
            except OSError as err:
                log.warning("%s skipped: %s", domain_dir, err.strerror)
                continue
            try:
                for name in sorted(os.listdir(domain_fd)):
                    if not (_PARTIAL.match(name) or _DELETING.match(name)):
                        continue
                    if not is_real_dir(name, domain_fd) or is_held(name, domain_fd):
                        continue
                    removed.append(domain_dir / name)
                    if not dry_run:
                        shutil.rmtree(name, dir_fd=domain_fd, ignore_errors=True)
                        os.fsync(domain_fd)
            finally:
                os.close(domain_fd)
        return removed

    def remove(self, domain: str, stamp: str) -> None:
        """Delete one complete backup: renamed out of sight first, so that an interrupted
        removal leaves a hidden `.deleting` directory (removed by the next run), never a
        half-deleted backup that looks complete. Neither the domain directory nor the
        backup may be a symbolic link: removal never leaves DEST."""
        check_backup_name(domain, stamp)
        backup = self.dest / domain / stamp
        doomed = f".{backup.name}.deleting"
        try:
            domain_fd = open_dir(backup.parent)
        except OSError as err:
            linked = err.errno in (errno.ELOOP, errno.ENOTDIR)
            why = "is a symbolic link" if linked else f"cannot be opened: {err.strerror}"
            raise StoreError(
                f"cannot remove backup {backup}: {backup.parent} {why}",
                "only backups in a directory of DEST itself are removed",
            ) from None
        try:
            if not is_real_dir(backup.name, domain_fd):
                raise StoreError(
                    f"cannot remove backup {backup}: it is a symbolic link or not a directory"
                )
            os.rename(backup.name, doomed, src_dir_fd=domain_fd, dst_dir_fd=domain_fd)
            os.fsync(domain_fd)
            shutil.rmtree(doomed, dir_fd=domain_fd)
        except OSError as err:
            raise StoreError(f"cannot remove backup {backup}: {err.strerror}") from None
        finally:
            os.close(domain_fd)

    def list_backups(
        self, domain: str | None = None, now: datetime | None = None
    ) -> list[BackupInfo]:
        """Complete backups, by domain name, newest first within a domain (`now`, the
        time a backup may not be later than: the clock's by default)."""
        if domain is not None:
            check_domain_name(domain)  # a name, never a path out of the store
        now = now or datetime.now(UTC)
        if not self.dest.is_dir():
            raise StoreError(f"backup destination {self.dest} does not exist")
        if domain is not None and not (self.dest / domain).is_dir():
            return []
        found: list[BackupInfo] = []
        for domain_dir in self._domain_dirs(domain):
            stamps = sorted(
                (p for p in domain_dir.iterdir() if is_stamp(p.name) and is_real_dir(p)),
                key=lambda p: p.name,
                reverse=True,
            )
            for path in domain_dir.iterdir():
                if is_stamp(path.name) and path.is_symlink():
                    log.warning(
                        "%s is a symbolic link: skipped (backups live in DEST itself)", path
                    )
            for path in stamps:
                files = LocalFiles(path)
                size = _size_of_files(path)
                found.append(describe_backup(domain_dir.name, path.name, files, path, size, now))
        return found

    def files(self, domain: str, stamp: str) -> "LocalFiles":
        check_backup_name(domain, stamp)
        return LocalFiles(self.dest / domain / stamp)

    def _domain_dirs(self, domain: str | None) -> list[Path]:
        """The domain directories of DEST (all, or `domain`'s): real directories only; a
        symbolic link is skipped with a warning, since what it points to is not DEST."""
        if domain is not None:
            names = [domain]
        else:
            names = sorted(name for name in os.listdir(self.dest) if is_domain_dir_name(name))
        found = []
        for name in names:
            path = self.dest / name
            if os.path.islink(path):
                log.warning("%s is a symbolic link: skipped (backups live in DEST itself)", path)
            elif path.is_dir():
                found.append(path)
        return found


class LocalPartial(AbortUnlessCommitted):
    """The directory a backup is written into; `commit` renames it into place.

    Used as a context manager: leaving the block without commit (an error, Ctrl-C,
    SIGTERM) removes the partial directory.
    """

    def __init__(self, path: Path, final: Path) -> None:
        self.path = path
        self.final = final
        self.stamp = final.name
        self._lock_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        self.committed = False

    def create(self, name: str) -> IO[bytes]:
        """A new file of the backup, 0600, opened for binary writing."""
        try:
            fd = os.open(
                self.path / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE
            )
        except OSError as err:
            raise write_error(err, self.path / name) from None
        return open(fd, "wb", buffering=0)

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode())

    def write_bytes(self, name: str, data: bytes) -> None:
        with self.create(name) as out:
            try:
                out.write(data)
                os.fsync(out.fileno())
            except OSError as err:
                raise write_error(err, self.path / name) from None

    def size_of(self, name: str) -> int:
        """Bytes of a file written into the backup (once closed)."""
        return (self.path / name).stat().st_size

    def commit(self) -> Path:
        """Sync the files and the directory, then make the backup appear at once."""
        try:
            for entry in self.path.iterdir():
                with open(entry, "rb") as written:
                    os.fsync(written.fileno())
            os.fsync(self._lock_fd)
            os.rename(self.path, self.final)
            _fsync_dir(self.final.parent)
        except OSError as err:
            raise write_error(err, self.path) from None
        self.committed = True
        os.close(self._lock_fd)
        return self.final

    def abort(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._lock_fd)


class LocalFiles:
    """A backup directory on this host, read as untrusted (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.label = str(path)

    def read(self, name: str) -> bytes:
        try:
            return read_regular_file(self.path / name, read_limit(name))
        except FileNotFoundError:
            raise missing_file(self.label, name, self.path.is_dir()) from None
        except OSError as err:
            raise CorruptBackup(f"cannot read {self.path / name}: {err.strerror}") from None

    def size(self, name: str) -> int | None:
        try:
            info = os.lstat(self.path / name)
        except FileNotFoundError:
            return None
        except OSError as err:
            raise CorruptBackup(f"cannot read {self.path / name}: {err.strerror}") from None
        if not stat.S_ISREG(info.st_mode):
            raise CorruptBackup(f"{self.path / name} is not a regular file")
        return info.st_size

    @contextmanager
    def stream(self, name: str) -> Iterator[IO[bytes]]:
        path = self.path / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise CorruptBackup(f"stream file {path} is missing") from None
        except OSError as err:  # ELOOP: a symbolic link
            raise CorruptBackup(f"cannot read stream file {path}: {err.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise CorruptBackup(f"stream file {path} is not a regular file")
        with os.fdopen(fd, "rb") as handle:
            yield handle

    def local_path(self, name: str) -> Path | None:
        self.size(name)  # a link, FIFO or device is refused before anyone opens it
        return self.path / name

    def record_verification(self, record: VerifyRecord) -> None:
        """Write verified.json atomically (the only file added to a complete backup).

        The temporary file is created afresh (O_EXCL, O_NOFOLLOW) relative to the backup
        directory, so a planted link there is never written through."""
        temporary = f".{VERIFIED}.tmp"
        try:
            dir_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as err:
            raise write_error(err, self.path / VERIFIED) from None
        try:
            unlink_at(temporary, dir_fd)  # left by a killed verify, or planted
            fd = os.open(
                temporary,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                FILE_MODE,
                dir_fd=dir_fd,
            )
            with open(fd, "wb") as out:
                out.write(build_verify_record(record).encode())
                os.fsync(out.fileno())
            os.rename(temporary, VERIFIED, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            os.fsync(dir_fd)
        except OSError as err:
            unlink_at(temporary, dir_fd)
            raise write_error(err, self.path / VERIFIED) from None
        finally:
            os.close(dir_fd)


def _claim(domain_dir: Path, stamp: str) -> bool:
    """Create the partial directory of backup `stamp`, unless that backup exists or
    another run started in the same second took the stamp."""
    if (domain_dir / stamp).exists():
        return False
    try:
        (domain_dir / f".{stamp}.partial").mkdir(mode=DIR_MODE)
    except FileExistsError:
        return False
    return True


def _size_of_files(path: Path) -> int:
    """Bytes of the regular files directly in `path` but the verification record (links,
    FIFOs, devices: not counted)."""
    total = 0
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False) and entry.name != VERIFIED:
                    total += entry.stat(follow_symlinks=False).st_size
    except OSError:
        pass  # listed with what could be read; the manifest check names the problem
    return total


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
