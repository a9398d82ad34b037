"""Real loopback servers for offsite copies: SFTP (a private sshd), FTP (vsftpd), S3 (moto).

Each server starts once per test session on 127.0.0.1 with a free port, its own config
and data in a temporary directory, and is stopped at the end. rclone reaches it through
one config file per server (mode 0600, remote name "offsite"), the only place its
secrets are written: the FTP password (obscured with `rclone obscure -`, fed on stdin)
and the S3 keys. The FTP server logs in a system user, virtbackup-ftp, whose password is
made once per host and kept in /var/cache/virtbackup-tests (root only).

    def test_something(remote):          # runs once for each of sftp, ftp and s3
        rclone.write_text(remote.remote, "a/b", "hi")
        remote.local_path("a/b")         # the file on disk (sftp, ftp), None for s3
        remote.stop()                    # the port now refuses connections
        remote.start()                   # back on the same port

Every test gets a fresh, unique base path on the server, so tests never see each
other's files. A test that stops a server gets it started again when it ends. Moto keeps
its objects in memory: a restarted S3 server has its bucket again, but no objects.
"""

import ctypes
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.real import unavailable
from virtbackup.adapters.rclone import Remote

KINDS = ("sftp", "ftp", "s3")
REMOTE_NAME = "offsite"
FTP_USER = "virtbackup-ftp"
FTP_PASSWORD_FILE = Path("/var/cache/virtbackup-tests/ftp-password")
S3_BUCKET = "virtbackup-test"
SSHD = Path("/usr/sbin/sshd")
VSFTPD = Path("/usr/sbin/vsftpd")
# Generous: moto imports boto and werkzeug, which alone takes seconds on an idle host.
STARTUP_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def end_with_parent() -> None:
    """In the child before exec: SIGTERM when the test session dies, even by SIGKILL or a
    timeout, so no server outlives it."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class LoopbackServer:
    """One daemon on 127.0.0.1:port, run in the foreground so it can be stopped and
    started again on the same port. `after_start` prepares it (the S3 bucket)."""

    kind: str
    argv: list[str]
    port: int
    workdir: Path
    rclone_config: Path
    root_location: str  # rclone location of the served root, e.g. "offsite:virtbackup-test"
    served_root: Path | None  # that root on disk; None when the server keeps no files
    secrets: tuple[str, ...]  # strings that must never appear in an argument list or log
    after_start: Callable[["LoopbackServer"], None] | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        with (self.workdir / f"{self.kind}.log").open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=end_with_parent,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not accepts(self.port):
            if not self.running or time.monotonic() > deadline:
                self.stop()
                log_text = (self.workdir / f"{self.kind}.log").read_text(errors="replace")
                unavailable(f"{self.kind} test server", f"did not start: {log_text[-500:]}")
            time.sleep(0.05)
        if self.after_start is not None:
            try:
                self.after_start(self)
            except BaseException:
                self.stop()
                raise

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def write_rclone_config(path: Path, options: dict[str, str]) -> None:
    """The one rclone config file of a server, readable by root only."""
    lines = [f"[{REMOTE_NAME}]", *(f"{key} = {value}" for key, value in options.items())]
    path.touch(mode=0o600)
    path.write_text("\n".join(lines) + "\n")


def obscure(password: str) -> str:
    """rclone's reversible obscuring, with the password on stdin rather than in argv."""
    result = subprocess.run(
        ["rclone", "obscure", "-"], input=password.encode(), capture_output=True, check=True
    )
    return result.stdout.decode().strip()


def require(program: Path | str, component: str) -> str:
    found = shutil.which(str(program))
    if found is None:
        unavailable(component, f"{program} is not installed")
    return found


# -- SFTP: a private sshd --------------------------------------------------------------


def make_sftp_server(workdir: Path) -> LoopbackServer:
    """sshd with its own host key, root login by key only, no PAM, no DNS."""
    require(SSHD, "SFTP server (openssh-server)")
    keygen = require("ssh-keygen", "SFTP server (openssh-client)")
    for name in ("host_key", "client_key"):
        subprocess.run(
            [keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(workdir / name)], check=True
        )
    shutil.copy(workdir / "client_key.pub", workdir / "authorized_keys")
    port = free_port()
    public_host_key = (workdir / "host_key.pub").read_text().split()
    (workdir / "known_hosts").write_text(f"[127.0.0.1]:{port} {' '.join(public_host_key[:2])}\n")
    # sshd refuses to start without its privilege separation directory.
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    config = workdir / "sshd_config"
    config.write_text(
        f"""Port {port}
ListenAddress 127.0.0.1
HostKey {workdir / "host_key"}
PidFile {workdir / "sshd.pid"}
AuthorizedKeysFile {workdir / "authorized_keys"}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
StrictModes no
Subsystem sftp internal-sftp
"""
    )
    served = workdir / "root"
    served.mkdir()
    rclone_config = workdir / "rclone.conf"
    write_rclone_config(
        rclone_config,
        {
            "type": "sftp",
            "host": "127.0.0.1",
            "port": str(port),
            "user": "root",
            "key_file": str(workdir / "client_key"),
            "known_hosts_file": str(workdir / "known_hosts"),
            "shell_type": "unix",
        },
    )
    return LoopbackServer(
        kind="sftp",
        argv=[str(SSHD), "-D", "-e", "-f", str(config)],
        port=port,
        workdir=workdir,
        rclone_config=rclone_config,
        root_location=f"{REMOTE_NAME}:{served}",
        served_root=served,
        secrets=(),
    )


# -- FTP: vsftpd -----------------------------------------------------------------------


def ftp_password() -> str:
    """The test user's password, made once per host and kept root-only: test sessions
    running side by side share the user, so none may change the password under another."""
    FTP_PASSWORD_FILE.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(FTP_PASSWORD_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        deadline = time.monotonic() + 5
        while not (password := FTP_PASSWORD_FILE.read_text().strip()):
            if time.monotonic() > deadline:  # another session died while writing it
                FTP_PASSWORD_FILE.unlink()
                return ftp_password()
            time.sleep(0.05)
        return password
    password = secrets.token_urlsafe(16)
    with os.fdopen(fd, "w") as file:
        file.write(password + "\n")
    return password


def ensure_ftp_user(password: str) -> None:
    """A local user for vsftpd's PAM login (its shell must be listed in /etc/shells)."""
    if subprocess.run(["id", "-u", FTP_USER], capture_output=True, check=False).returncode:
        subprocess.run(
            ["useradd", "--no-create-home", "--home-dir", "/", "--shell", "/bin/sh", FTP_USER],
            check=True,
        )
    subprocess.run(["chpasswd"], input=f"{FTP_USER}:{password}".encode(), check=True)


def make_ftp_server(workdir: Path) -> LoopbackServer:
    """vsftpd standalone, the test user chrooted into the served directory, writable,
    passive data connections on loopback ports."""
    require(VSFTPD, "FTP server (vsftpd)")
    password = ftp_password()
    ensure_ftp_user(password)
    served = workdir / "root"
    served.mkdir()
    shutil.chown(served, FTP_USER, FTP_USER)
    port = free_port()
    passive = free_port()
    config = workdir / "vsftpd.conf"
    config.write_text(
        f"""listen=YES
listen_ipv6=NO
listen_address=127.0.0.1
listen_port={port}
background=NO
anonymous_enable=NO
local_enable=YES
write_enable=YES
local_umask=022
local_root={served}
chroot_local_user=YES
allow_writeable_chroot=YES
pam_service_name=vsftpd
userlist_enable=NO
pasv_enable=YES
pasv_address=127.0.0.1
pasv_min_port={passive}
pasv_max_port={passive + 50}
connect_from_port_20=NO
seccomp_sandbox=NO
isolate=NO
isolate_network=NO
xferlog_enable=NO
use_localtime=NO
secure_chroot_dir={workdir / "empty"}
"""
    )
    (workdir / "empty").mkdir(mode=0o755)
    rclone_config = workdir / "rclone.conf"
    obscured = obscure(password)
    write_rclone_config(
        rclone_config,
        {
            "type": "ftp",
            "host": "127.0.0.1",
            "port": str(port),
            "user": FTP_USER,
            "pass": obscured,
        },
    )
    return LoopbackServer(
        kind="ftp",
        argv=[str(VSFTPD), str(config)],
        port=port,
        workdir=workdir,
        rclone_config=rclone_config,
        root_location=f"{REMOTE_NAME}:",
        served_root=served,
        secrets=(password, obscured),
    )


# -- S3: moto's server -----------------------------------------------------------------


def moto_server() -> str:
    """moto_server of the interpreter running the tests (tox installs it), else PATH's."""
    beside = Path(sys.executable).parent / "moto_server"
    if beside.exists():
        return str(beside)
    return require("moto_server", "S3 test server (pip install 'moto[server]')")


def create_bucket(server: LoopbackServer) -> None:
    """Moto keeps everything in memory: every start needs the bucket made again.

    Versioning is on because moto answers an object's HEAD with `versionId=null`, which
    rclone 1.60 sends after each multipart upload to an unversioned bucket, with 400."""
    rclone_cli(server, "mkdir", server.root_location)
    rclone_cli(server, "backend", "versioning", server.root_location, "Enabled")


def rclone_cli(server: LoopbackServer, *args: str) -> None:
    """rclone with the server's config, outside the adapter under test."""
    argv = ["rclone", *args, "--config", str(server.rclone_config)]
    subprocess.run(argv, capture_output=True, check=True, timeout=60, preexec_fn=end_with_parent)


def make_s3_server(workdir: Path) -> LoopbackServer:
    """moto's S3 server with one bucket; rclone talks to it as a generic S3 provider."""
    program = moto_server()
    port = free_port()
    access_key = "virtbackup-test-" + secrets.token_hex(4)
    secret_key = secrets.token_urlsafe(24)
    rclone_config = workdir / "rclone.conf"
    write_rclone_config(
        rclone_config,
        {
            "type": "s3",
            "provider": "Other",
            "env_auth": "false",
            "access_key_id": access_key,
            "secret_access_key": secret_key,
            "endpoint": f"http://127.0.0.1:{port}",
            "region": "us-east-1",
            "force_path_style": "true",
        },
    )
    return LoopbackServer(
        kind="s3",
        argv=[program, "-H", "127.0.0.1", "-p", str(port)],
        port=port,
        workdir=workdir,
        rclone_config=rclone_config,
        root_location=f"{REMOTE_NAME}:{S3_BUCKET}",
        served_root=None,
        secrets=(secret_key,),
        after_start=create_bucket,
    )


# -- fixtures --------------------------------------------------------------------------


@dataclass
class RemoteServer:
    """A test's own base path on one of the servers, and the server's switch."""

    server: LoopbackServer
    remote: Remote
    base: str  # the base path below the server's root

    @property
    def kind(self) -> str:
        return self.server.kind

    @property
    def secrets(self) -> tuple[str, ...]:
        return self.server.secrets

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()

    def local_path(self, path: str) -> Path | None:
        """Where `path` (relative to `remote`) lies on disk; None for S3."""
        if self.server.served_root is None:
            return None
        return self.server.served_root / self.base / path


def served(kind: str, make: Callable[[Path], LoopbackServer]) -> Iterator[LoopbackServer]:
    """A server for the whole session, in a directory of its own outside pytest's
    (which are 0700: the FTP user could not reach its files there)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"virtbackup-{kind}-"))
    workdir.chmod(0o711)
    try:
        server = make(workdir)
        server.start()
        yield server
        server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def sftp_server() -> Iterator[LoopbackServer]:
    yield from served("sftp", make_sftp_server)


@pytest.fixture(scope="session")
def ftp_server() -> Iterator[LoopbackServer]:
    yield from served("ftp", make_ftp_server)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[LoopbackServer]:
    # rclone 1.60's S3 client fails every request when AWS_CA_BUNDLE is set
    # ("LoadCustomCABundleError ... unsupported transport"); the server is plain http.
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("AWS_CA_BUNDLE", raising=False)
        yield from served("s3", make_s3_server)


def on_server(server: LoopbackServer, request: pytest.FixtureRequest) -> Iterator[RemoteServer]:
    """A fresh base path for this test; the server running again when the test ends."""
    test = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)[:40].strip("-")
    base = f"{test}-{uuid.uuid4().hex[:8]}"
    location = Remote(server.root_location).path(base)
    yield RemoteServer(server, Remote(location, config=server.rclone_config), base)
    if not server.running:
        server.start()


@pytest.fixture(params=KINDS)
def remote(request: pytest.FixtureRequest) -> Iterator[RemoteServer]:
    yield from on_server(request.getfixturevalue(f"{request.param}_server"), request)


@pytest.fixture
def sftp_remote(
    sftp_server: LoopbackServer, request: pytest.FixtureRequest
) -> Iterator[RemoteServer]:
    yield from on_server(sftp_server, request)


@pytest.fixture
def ftp_remote(
    ftp_server: LoopbackServer, request: pytest.FixtureRequest
) -> Iterator[RemoteServer]:
    yield from on_server(ftp_server, request)


@pytest.fixture
def s3_remote(s3_server: LoopbackServer, request: pytest.FixtureRequest) -> Iterator[RemoteServer]:
    yield from on_server(s3_server, request)
