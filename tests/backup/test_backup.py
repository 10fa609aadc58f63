"""The first backup: snapshot, verify, and reconcile the tree exactly."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from conftest import stored_copy, tree_digest
from dopemux_update import BackupError, BackupStore, Scope


def store_for(root: Path) -> tuple[BackupStore, Scope]:
    state = root / ".dopemux" / "update"
    return BackupStore(state / "backups"), Scope.for_installation(
        root, state_dir=state, migrations_dir=root / "migrations"
    )


def odd_tree(root: Path) -> None:
    (root / "ro.txt").write_text("read only")
    (root / "ro.txt").chmod(0o444)
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    (root / "dangling").symlink_to("does/not/exist")
    (root / "dir-link").symlink_to("config")
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "a" / "b" / "c" / "leaf.bin").write_bytes(bytes(range(256)) * 10)
    (root / os.fsdecode(b"caf\xe9-latin1.txt")).write_text("not utf-8 name")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: main\n")
    (root / "migrations").mkdir()
    (root / "migrations" / "keep.py").write_text("# not in scope\n")


def mess_up(root: Path) -> None:
    (root / "config" / "app.yaml").write_text("changed")
    (root / "ro.txt").chmod(0o644)
    (root / "run.sh").unlink()
    (root / "dangling").unlink()
    (root / "dangling").write_text("now a file")
    (root / "dir-link").unlink()
    (root / "dir-link").mkdir()
    (root / "dir-link" / "inner").write_text("x")
    (root / "a" / "b" / "c" / "leaf.bin").unlink()
    (root / "a" / "b" / "c").rmdir()
    (root / "a" / "b").rmdir()
    (root / "new" / "deeper").mkdir(parents=True)
    (root / "new" / "deeper" / "file").write_text("added")
    (root / "empty").rmdir()
    (root / "link-to-app").unlink()
    (root / "link-to-app").symlink_to("secret.env")
    (root / os.fsdecode(b"caf\xe9-latin1.txt")).write_text("edited")
    (root / "secret.env").chmod(0o640)


def test_restore_makes_an_odd_tree_identical(installation: Path) -> None:
    odd_tree(installation)
    store, scope = store_for(installation)
    before = tree_digest(installation)
    info = store.create(scope)
    mess_up(installation)
    (installation / ".git" / "HEAD").write_text("ref: other\n")
    (installation / "migrations" / "keep.py").write_text("# edited by the developer\n")
    assert tree_digest(installation) != before
    report = store.restore(info.id, installation)
    after = tree_digest(installation)
    # .git and the migrations folder are out of scope: they keep their new content.
    for outside in (".git/HEAD", "migrations/keep.py"):
        before.pop(outside)
        after.pop(outside)
    assert after == before
    assert "new" in report.removed
    assert "config/app.yaml" in report.written


def test_restore_rewrites_only_what_differs(installation: Path) -> None:
    store, scope = store_for(installation)
    info = store.create(scope)
    (installation / "config" / "app.yaml").write_text("changed")
    untouched = installation / "config" / "nested" / "deep.json"
    inode = untouched.stat().st_ino
    report = store.restore(info.id, installation)
    assert report.written == ("config/app.yaml",)
    assert report.removed == ()
    assert untouched.stat().st_ino == inode


def test_restore_fixes_the_metadata_of_changed_paths_only(installation: Path) -> None:
    store, scope = store_for(installation)
    info = store.create(scope)
    (installation / "secret.env").chmod(0o604)  # the mode alone: its content is the same
    data = installation / "config" / "nested" / "deep.json"
    os.utime(data, ns=(0, 0))  # the mtime alone
    (installation / "config").chmod(0o700)  # a folder's mode
    report = store.restore(info.id, installation)
    assert report.written == ()
    assert sorted(report.fixed) == ["config", "config/nested/deep.json", "secret.env"]
    assert stat.S_IMODE((installation / "secret.env").stat().st_mode) == 0o600
    assert data.stat().st_mtime_ns != 0
    assert stat.S_IMODE((installation / "config").stat().st_mode) == 0o755
    assert store.restore(info.id, installation).fixed == ()  # nothing left to fix


def test_restore_never_writes_through_a_symlinked_folder(
    installation: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    store, scope = store_for(installation)
    info = store.create(scope)
    # A migration replaced config/ with a symlink to a folder outside the installation.
    os.rename(installation / "config", tmp_path / "moved-config")
    (installation / "config").symlink_to(outside)
    store.restore(info.id, installation)
    assert list(outside.iterdir()) == []
    assert (installation / "config").is_dir()
    assert not (installation / "config").is_symlink()
    assert (installation / "config" / "app.yaml").read_text() == "# keep me\nlog_level: info\n"


def test_backups_are_private_and_complete(installation: Path) -> None:
    store, scope = store_for(installation)
    info = store.create(scope, version_from="1.0", version_to="1.1")
    assert stat.S_IMODE(info.path.stat().st_mode) == 0o700
    stored = [p for p in store.backups_dir.rglob("*") if p.is_file()]
    assert {p.name for p in info.path.iterdir()} == {
        "manifest.json",
        "manifest.xxh3",
        "manifest.hmac",
    }
    objects = [p for p in stored if p.is_relative_to(store.backups_dir / "objects")]
    assert objects
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o400 for p in objects)  # immutable
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in stored if p not in objects)
    folders = [p for p in store.backups_dir.rglob("*") if p.is_dir()]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o700 for p in folders)
    assert [b.id for b in store.list()] == [info.id]
    assert not any(p.name.startswith(".building") for p in store.backups_dir.iterdir())


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "remove"])
def test_a_damaged_backup_fails_verification_and_is_not_restored(
    installation: Path, damage: str
) -> None:
    store, scope = store_for(installation)
    info = store.create(scope)
    stored = stored_copy(info.path, "config/app.yaml")
    if damage == "flip a byte":
        data = bytearray(stored.read_bytes())
        data[0] ^= 0xFF
        stored.write_bytes(bytes(data))
    elif damage == "truncate":
        stored.write_bytes(stored.read_bytes()[:3])
    else:
        stored.unlink()
    (installation / "config" / "app.yaml").write_text("migrated")
    with pytest.raises(BackupError, match=r"config/app\.yaml"):
        store.verify(info.id)
    with pytest.raises(BackupError, match="failed verification"):
        store.restore(info.id, installation)
    assert (installation / "config" / "app.yaml").read_text() == "migrated"


def test_unknown_backup_ids_are_refused(installation: Path) -> None:
    store, _ = store_for(installation)
    with pytest.raises(BackupError, match="does not exist"):
        store.verify("20200101T000000000Z-abcdef")
    with pytest.raises(BackupError, match="not a valid backup id"):
        store.verify("../escape")
