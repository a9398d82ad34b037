"""A backup's metadata files are read once per open: a store that serves one file with
other bytes on a later read (a malicious remote, or whoever can write the directory)
cannot get bytes used that the signature check did not see. The domain XML is bound to
the manifest by its sha256, and remote metadata reads are bounded."""

import json
import shutil
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO

import pytest
from age_helpers import KeyPair, make_key_pair
from backup_helpers import DOMAIN_XML, MiB, disk_of
from harness.images import build_fs_image
from harness.remotes import RemoteServer
from signing_helpers import SigningKey, make_signing_key

from virtbackup.adapters import age
from virtbackup.core.backup_errors import CorruptBackup
from virtbackup.core.manifest import parse_manifest
from virtbackup.core.progress import NullProgress
from virtbackup.core.signature import BadSignature
from virtbackup.core.verify_record import VerifyRecord
from virtbackup.engine.datapath.chunk_pipeline import WriterOptions
from virtbackup.engine.datapath.disk_backup import back_up_disks
from virtbackup.engine.datapath.verify import verify_backup
from virtbackup.engine.stores.backup_access import Trust, open_backup
from virtbackup.engine.stores.local import LocalFiles, LocalStore
from virtbackup.engine.stores.remote import RemoteStore

OTHER_XML = DOMAIN_XML.replace("web1", "db7").replace("type='raw'", "type='qcow2'")


class TwoFaced:
    """A real backup directory whose file `name` reads as `served[0]`, then `served[1]`,
    ... (the last one again and again); every read is counted."""

    def __init__(self, path: Path, name: str, served: list[bytes]) -> None:
        self.files = LocalFiles(path)
        self.label = self.files.label
        self.name = name
        self.served = served
        self.reads: dict[str, int] = {}

    def read(self, name: str) -> bytes:
        count = self.reads.get(name, 0)
        self.reads[name] = count + 1
        if name == self.name:
            return self.served[min(count, len(self.served) - 1)]
        return self.files.read(name)

    def size(self, name: str) -> int | None:
        return self.files.size(name)

    def stream(self, name: str) -> AbstractContextManager[IO[bytes]]:
        return self.files.stream(name)

    def local_path(self, name: str) -> Path | None:
        return self.files.local_path(name)

    def record_verification(self, record: VerifyRecord) -> None:
        self.files.record_verification(record)


@pytest.fixture(scope="module")
def signing(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return make_signing_key(tmp_path_factory.mktemp("signing"))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return make_key_pair(tmp_path_factory.mktemp("age"))


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fs_image(
        tmp_path_factory.mktemp("img") / "web1.raw", size=16 * MiB, content=2 * MiB
    ).path


def signed_backup(
    dest: Path,
    image: Path,
    key: SigningKey,
    keys: KeyPair | None = None,
    domain: str = "web1",
    xml: str = DOMAIN_XML,
) -> Path:
    dest.mkdir(exist_ok=True)
    return back_up_disks(
        LocalStore(dest),
        domain,
        "6f1c2c64-2a53-4d3c-9a0e-7d0a4f1e2b11",
        xml,
        "offline",
        [disk_of(image)],
        NullProgress(),
        WriterOptions(chunk_size=MiB),
        encrypt_to=None if keys is None else age.read_recipients(keys.recipients),
        sign_with=key.key,
    ).path


def forged_manifest(genuine: bytes) -> bytes:
    """The manifest with another digest: what a forger wants restored."""
    document = json.loads(genuine)
    document["disks"][0]["digest"] = "0" * 64
    return json.dumps(document, indent=2).encode() + b"\n"


def test_manifest_served_forged_first_is_a_bad_signature(
    tmp_path: Path, image: Path, signing: SigningKey
) -> None:
    backup = signed_backup(tmp_path / "dest", image, signing)
    genuine = (backup / "manifest.json").read_bytes()
    trust = Trust(signing.allowed_signers)

    files = TwoFaced(backup, "manifest.json", [forged_manifest(genuine), genuine])
    with pytest.raises(BadSignature, match=r"manifest\.json does not match"):
        open_backup(files, trust=trust)
    assert files.reads["manifest.json"] == 1

    outcome = verify_backup(TwoFaced(backup, "manifest.json", [forged_manifest(genuine), genuine]),
                            NullProgress(), trust=trust)  # fmt: skip
    assert not outcome.ok
    assert outcome.problem is not None and "manifest.json does not match" in outcome.problem
    # served the same both times the backup is as good as it was
    assert verify_backup(backup, NullProgress(), trust=trust).ok


def test_domain_xml_served_forged_later_is_never_used(
    tmp_path: Path, image: Path, signing: SigningKey
) -> None:
    backup = signed_backup(tmp_path / "dest", image, signing)
    genuine = (backup / "domain.xml").read_bytes()
    files = TwoFaced(backup, "domain.xml", [genuine, OTHER_XML.encode()])
    opened = open_backup(files, trust=Trust(signing.allowed_signers))
    assert opened.signature.principal == "kvm1"
    assert opened.domain_xml() == genuine.decode()
    assert opened.domain_xml() == genuine.decode()
    assert files.reads == {
        "manifest.json": 1,
        "manifest.json.sig": 1,
        "domain.xml": 1,
        "domain.xml.sig": 1,
    }


def test_domain_xml_served_forged_first_is_a_bad_signature(
    tmp_path: Path, image: Path, signing: SigningKey
) -> None:
    backup = signed_backup(tmp_path / "dest", image, signing)
    genuine = (backup / "domain.xml").read_bytes()
    files = TwoFaced(backup, "domain.xml", [OTHER_XML.encode(), genuine])
    with pytest.raises(BadSignature, match=r"domain\.xml does not match"):
        open_backup(files, trust=Trust(signing.allowed_signers))


def test_encrypted_metadata_is_decrypted_from_the_bytes_checked(
    tmp_path: Path, image: Path, signing: SigningKey, keys: KeyPair
) -> None:
    backup = signed_backup(tmp_path / "dest", image, signing, keys)
    trust = Trust(signing.allowed_signers)
    genuine = (backup / "manifest.json.age").read_bytes()
    clear = age.decrypt_bytes(keys.identity, genuine, "manifest")
    forged = age.encrypt_bytes(keys.recipients, forged_manifest(clear))
    expected = parse_manifest(clear.decode())

    # the genuine bytes to the signature check, the forged ones to whoever reads again
    files = TwoFaced(backup, "manifest.json.age", [genuine, forged])
    opened = open_backup(files, keys.identity, trust)
    assert opened.manifest == expected
    assert files.reads["manifest.json.age"] == 1
    # the forged bytes first: they are what is checked, and refused
    files = TwoFaced(backup, "manifest.json.age", [forged, genuine])
    with pytest.raises(BadSignature, match=r"manifest\.json\.age does not match"):
        open_backup(files, keys.identity, trust)

    genuine_xml = (backup / "domain.xml.age").read_bytes()
    forged_xml = age.encrypt_bytes(keys.recipients, OTHER_XML.encode())
    files = TwoFaced(backup, "domain.xml.age", [genuine_xml, forged_xml])
    opened = open_backup(files, keys.identity, trust)
    assert opened.domain_xml() == DOMAIN_XML
    assert files.reads["domain.xml.age"] == 1


def test_domain_xml_is_bound_to_its_manifest(
    tmp_path: Path, image: Path, signing: SigningKey, keys: KeyPair
) -> None:
    trust = Trust(signing.allowed_signers)
    for encrypt, suffix in ((None, ""), (keys, ".age")):
        ours = signed_backup(tmp_path / f"a{suffix}", image, signing, encrypt)
        theirs = signed_backup(tmp_path / f"b{suffix}", image, signing, encrypt, "db7", OTHER_XML)
        name = "domain.xml" + suffix
        manifest = parse_manifest(
            (ours / "manifest.json").read_text()
            if encrypt is None
            else age.decrypt_bytes(keys.identity, (ours / "manifest.json.age").read_bytes(), "m")
            .decode()
        )  # fmt: skip
        assert manifest.domain_xml_sha256 is not None
        for file in (name, name + ".sig"):
            shutil.copyfile(theirs / file, ours / file)
        identity = None if encrypt is None else keys.identity
        opened = open_backup(LocalFiles(ours), identity, trust)  # the signatures hold
        assert opened.signature.principal == "kvm1"
        with pytest.raises(CorruptBackup, match=f"{name} is not the domain XML its manifest"):
            opened.domain_xml()
        outcome = verify_backup(ours, NullProgress(), identity=identity, trust=trust)
        assert not outcome.ok
        assert outcome.problem == (
            f"{ours}/{name} is not the domain XML its manifest records (replaced or damaged)"
        )


def test_a_manifest_without_the_xml_digest_reads_as_before(tmp_path: Path, image: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    backup = back_up_disks(
        LocalStore(dest), "web1", "6f1c2c64-2a53-4d3c-9a0e-7d0a4f1e2b11", DOMAIN_XML,
        "offline", [disk_of(image)], NullProgress(), WriterOptions(chunk_size=MiB),
    ).path  # fmt: skip
    document = json.loads((backup / "manifest.json").read_text())
    del document["domain_xml_sha256"]
    (backup / "manifest.json").write_text(json.dumps(document))
    (backup / "domain.xml").write_text(OTHER_XML)  # nothing binds it: an older backup
    opened = open_backup(LocalFiles(backup))
    assert opened.manifest.domain_xml_sha256 is None
    assert opened.domain_xml() == OTHER_XML
    assert verify_backup(backup, NullProgress()).ok


def remote_backup(
    sftp_remote: RemoteServer, tmp_path: Path, image: Path, signing: SigningKey
) -> tuple[RemoteStore, str, Path]:
    local = signed_backup(tmp_path / "dest", image, signing)
    store = RemoteStore(sftp_remote.remote, "kvm1")
    store.upload(local)
    served = sftp_remote.local_path(f"kvm1/web1/{local.name}")
    assert served is not None
    return store, local.name, served


def test_a_remote_serving_a_forged_manifest_to_a_second_read(
    sftp_remote: RemoteServer, tmp_path: Path, image: Path, signing: SigningKey
) -> None:
    store, stamp, served = remote_backup(sftp_remote, tmp_path, image, signing)
    genuine = (served / "manifest.json").read_bytes()
    remote = store.files("web1", stamp)

    class Swapping:
        """The real remote, its manifest replaced on the server once it was read."""

        label = remote.label

        def read(self, name: str) -> bytes:
            data = remote.read(name)
            if name == "manifest.json":
                (served / name).write_bytes(genuine if data != genuine else forged)
            return data

        size = staticmethod(remote.size)
        stream = staticmethod(remote.stream)
        local_path = staticmethod(remote.local_path)
        record_verification = staticmethod(remote.record_verification)

    forged = forged_manifest(genuine)
    assert len(forged) == len(genuine)  # the size the listing gave
    (served / "manifest.json").write_bytes(forged)
    with pytest.raises(BadSignature, match=r"manifest\.json does not match"):
        open_backup(Swapping(), trust=Trust(signing.allowed_signers))


def test_remote_metadata_reads_are_bounded(
    sftp_remote: RemoteServer, tmp_path: Path, image: Path, signing: SigningKey
) -> None:
    store, stamp, served = remote_backup(sftp_remote, tmp_path, image, signing)
    trust = Trust(signing.allowed_signers)
    files = store.files("web1", stamp)
    label = files.label

    # a signature listed larger than any signature is not downloaded
    (served / "domain.xml.sig").write_bytes(b"x" * (64 * 1024 + 1))
    with pytest.raises(CorruptBackup) as caught:
        store.files("web1", stamp).read("domain.xml.sig")
    assert caught.value.message == f"{label}/domain.xml.sig is too large to be ours (65537 bytes)"

    # a manifest that grows past the limit after it was listed: read no further
    files.sizes()
    with open(served / "manifest.json", "ab") as grown:
        grown.truncate(16 * MiB + 1)
    with pytest.raises(CorruptBackup, match=r"remote served more than 16777216 bytes"):
        open_backup(files, trust=trust)


def test_local_signature_reads_are_bounded(
    tmp_path: Path, image: Path, signing: SigningKey
) -> None:
    backup = signed_backup(tmp_path / "dest", image, signing)
    (backup / "manifest.json.sig").write_bytes(b"x" * (64 * 1024 + 1))
    with pytest.raises(CorruptBackup, match="too large to be ours"):
        LocalFiles(backup).read("manifest.json.sig")
