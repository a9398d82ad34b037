"""The store: partial directories, atomic commit, permissions, listing order."""

import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from virtbackup.core.errors import UsageError
from virtbackup.engine.stores.local import LocalStore
from virtbackup.engine.stores.store import check_domain_name

NOW = datetime(2025, 1, 25, 18, 30, 0, tzinfo=UTC)


def test_commit_renames_synced_partial_into_place(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    with store.begin("web1", NOW) as partial:
        assert partial.path.name == ".20250125T183000Z.partial"
        with partial.create("vda.raw.lz4") as out:
            out.write(b"data")
        path = partial.commit()
    assert path == tmp_path / "web1" / "20250125T183000Z"
    assert not partial.path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert stat.S_IMODE((path / "vda.raw.lz4").stat().st_mode) == 0o600


def test_same_second_gets_a_suffix(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    with store.begin("web1", NOW) as first:
        first.commit()
    with store.begin("web1", NOW) as second:
        assert second.commit().name == "20250125T183000Z-2"


def test_existing_domain_dir_is_made_private(tmp_path: Path) -> None:
    (tmp_path / "web1").mkdir(mode=0o755)
    with LocalStore(tmp_path).begin("web1", NOW):
        pass
    assert stat.S_IMODE((tmp_path / "web1").stat().st_mode) == 0o700


def test_error_inside_block_removes_partial(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    with pytest.raises(RuntimeError), store.begin("web1", NOW) as partial:
        raise RuntimeError("disk failed")
    assert not partial.path.exists()
    assert list((tmp_path / "web1").iterdir()) == []


@pytest.mark.parametrize(
    "name", ["", ".", "..", ".virtbackup-skip-free-x", ".virtbackupweb", "a/b", "x\0y"]
)
def test_domain_names_that_cannot_be_directories(name: str) -> None:
    with pytest.raises(UsageError):
        check_domain_name(name)


@pytest.mark.parametrize("name", [".web", "..web", "a.b", "virtbackup"])
def test_hidden_libvirt_names_are_domain_directories(name: str) -> None:
    check_domain_name(name)
