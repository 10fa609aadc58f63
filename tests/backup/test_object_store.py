"""The content-addressed object store (issue 16): objects written once, referenced by hash
from each manifest, verified, and removed by reference; older backups still usable."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import as_older_format, stored_copy, tree_digest
from dopemux_update import BackupStore, Scope
from dopemux_update._backup._manifest import DamagedBackupError, object_path


def store_and_scope(root: Path) -> tuple[BackupStore, Scope]:
    state = root / ".dopemux" / "update"
    scope = Scope.for_installation(root, state_dir=state, migrations_dir=root / "migrations")
    return BackupStore(state / "backups"), scope


def inodes(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``folder`` with its (inode, mtime, ctime): what a write changes."""
    found = {}
    for path in [folder, *folder.rglob("*")]:
        info = path.lstat()
        found[str(path.relative_to(folder))] = (info.st_ino, info.st_mtime_ns, info.st_ctime_ns)
    return found


def objects(store: BackupStore) -> set[str]:
    """The names (hashes) of the objects in the shared object folder."""
    return {p.name for p in (store.backups_dir / "objects").rglob("*") if p.is_file()}


def cli(root: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "dopemux_update", *args, "--root", str(root), "--json"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else None


def test_an_unchanged_backup_writes_its_manifest_and_nothing_else(installation: Path) -> None:
    (installation / "data" / "deep" / "er").mkdir(parents=True)
    for index in range(20):
        (installation / "data" / "deep" / "er" / f"{index}.bin").write_bytes(os.urandom(100))
    store, scope = store_and_scope(installation)
    store.create(scope)
    before = inodes(store.backups_dir)
    second = store.create(scope)
    after = inodes(store.backups_dir)
    written = {path for path, identity in after.items() if before.get(path) != identity}
    assert written == {
        ".",  # the backups folder gains the new backup's name
        second.id,
        f"{second.id}/manifest.json",
        f"{second.id}/manifest.xxh3",
        f"{second.id}/manifest.hmac",
    }
    assert second.copied_bytes == 0
    store.verify(second.id)


def test_objects_are_written_once_read_only_and_never_rewritten(installation: Path) -> None:
    store, scope = store_and_scope(installation)
    first = store.create(scope)
    stored = stored_copy(first.path, "config/app.yaml")
    assert stored.is_relative_to(store.backups_dir / "objects")
    assert stored.name == store.read_manifest(first.id).entries["config/app.yaml"].hash
    assert stat.S_IMODE(stored.stat().st_mode) == 0o400
    identity = inodes(stored.parent)
    # A new file with the same content, and an edit elsewhere: the object is referenced again,
    # neither replaced nor touched; the edit gets an object of its own.
    (installation / "copy.yaml").write_bytes((installation / "config" / "app.yaml").read_bytes())
    (installation / "secret.env").write_text("TOKEN=changed\n")
    second = store.create(scope)
    assert stored_copy(second.path, "copy.yaml") == stored
    assert inodes(stored.parent) == identity
    assert stored_copy(second.path, "secret.env") != stored_copy(first.path, "secret.env")
    assert not list(store.backups_dir.rglob("*.tmp"))  # no temporary copy left


def test_an_object_of_the_wrong_size_is_stored_again_by_the_next_backup(
    installation: Path,
) -> None:
    store, scope = store_and_scope(installation)
    first = store.create(scope)
    stored = stored_copy(first.path, "config/app.yaml")
    stored.write_bytes(stored.read_bytes()[:3])  # damaged: truncated
    second = store.create(scope)
    assert second.copied_bytes == (installation / "config" / "app.yaml").stat().st_size
    assert stored.read_bytes() == (installation / "config" / "app.yaml").read_bytes()
    assert stat.S_IMODE(stored.stat().st_mode) == 0o400
    store.verify(first.id)  # repaired for every backup referencing it
    store.verify(second.id)


def test_prune_removes_the_objects_no_backup_references_and_keeps_the_others(
    installation: Path,
) -> None:
    store, scope = store_and_scope(installation)
    first = store.create(scope)
    old = stored_copy(first.path, "config/app.yaml")
    (installation / "config" / "app.yaml").write_text("edited after the first backup")
    second = store.create(scope)
    new = stored_copy(second.path, "config/app.yaml")
    shared = stored_copy(second.path, "secret.env")
    assert shared == stored_copy(first.path, "secret.env")
    assert store.prune(1) == [first.id]
    assert not old.exists()
    assert new.exists()
    assert shared.exists()
    assert objects(store) == {
        e.hash for e in store.read_manifest(second.id).entries.values() if e.type == "file"
    }
    store.verify(second.id)
    before = tree_digest(installation)
    (installation / "config" / "app.yaml").write_text("broken")
    store.restore(second.id, installation)
    assert tree_digest(installation) == before  # the second backup, intact
    assert (installation / "config" / "app.yaml").read_text() == "edited after the first backup"
    store.delete(second.id)
    assert objects(store) == set()


def test_a_crash_between_removing_manifests_and_objects_leaves_a_sound_store(
    installation: Path,
) -> None:
    assert cli(installation, "backups", "create")[0] == 0
    (installation / "config" / "app.yaml").write_text("edited after the first backup")
    code, second = cli(installation, "backups", "create")
    assert code == 0
    store, _ = store_and_scope(installation)
    first_id = store.ids()[0]
    orphan = stored_copy(store.path_of(first_id), "config/app.yaml")
    crash = {"DOPEMUX_UPDATE_CRASH_AT": "backup.before_collect"}
    code, _ = cli(installation, "backups", "prune", "--keep", "1", "--yes", env=crash)
    assert code == -9  # killed between the two steps
    assert store.ids() == [second["backup"]["id"]]
    assert orphan.exists()  # unreferenced, left for the next prune
    code, verified = cli(installation, "backups", "verify", "latest")
    assert (code, verified["ok"]) == (0, True)
    code, pruned = cli(installation, "backups", "prune", "--keep", "1", "--yes")
    assert (code, pruned["deleted"]) == (0, [])
    assert not orphan.exists()
    assert cli(installation, "backups", "verify", "latest")[0] == 0


def test_an_object_being_written_is_never_visible_under_its_final_name(
    installation: Path,
) -> None:
    crash = {"DOPEMUX_UPDATE_CRASH_AT": "backup.file:2"}  # two files copied, not yet synced
    assert cli(installation, "backups", "create", env=crash)[0] == -9
    store, _ = store_and_scope(installation)
    [building] = store.backups_dir.glob(".building-*")
    assert len(list((building / "staging").iterdir())) >= 2  # under temporary names
    assert objects(store) == set()
    assert store.ids() == []
    code, recovered = cli(installation, "recover")
    assert code == 0, recovered
    assert not list(store.backups_dir.glob(".building-*"))  # recovery removes what was left
    assert cli(installation, "backups", "create")[0] == 0


def test_objects_of_a_backup_cut_short_are_removed_by_the_next_prune(installation: Path) -> None:
    assert cli(installation, "backups", "create")[0] == 0
    (installation / "new.txt").write_text("only in the backup that never finished")
    crash = {"DOPEMUX_UPDATE_CRASH_AT": "backup.before_rename"}
    assert cli(installation, "backups", "create", env=crash)[0] == -9
    store, _ = store_and_scope(installation)
    [only] = store.ids()
    referenced = {e.hash for e in store.read_manifest(only).entries.values() if e.hash}
    assert len(objects(store) - referenced) == 1  # complete and durable, but unreferenced
    assert cli(installation, "backups", "prune", "--keep", "5", "--yes")[0] == 0
    assert objects(store) == referenced


def test_garbage_collection_removes_nothing_while_a_manifest_is_unreadable(
    installation: Path,
) -> None:
    store, scope = store_and_scope(installation)
    first = store.create(scope)
    old = stored_copy(first.path, "config/app.yaml")
    (installation / "config" / "app.yaml").write_text("edited")
    second = store.create(scope)
    new = stored_copy(second.path, "config/app.yaml")
    (second.path / "manifest.json").write_bytes(b"{ not json")
    assert store.prune(1) == [first.id]
    assert new.exists()  # what the unreadable manifest references is unknown: all is kept
    assert old.exists()


def test_a_damaged_object_names_every_backup_that_references_it(installation: Path) -> None:
    store, scope = store_and_scope(installation)
    ids = [store.create(scope).id for _ in range(3)]
    full = store.create(scope, full=True)
    stored = stored_copy(store.path_of(ids[0]), "config/nested/deep.json")
    stored.write_bytes(b"X" + stored.read_bytes()[1:])
    with pytest.raises(DamagedBackupError) as raised:
        store.verify(ids[1])
    assert raised.value.damaged == ("config/nested/deep.json",)
    assert raised.value.affected == (ids[0], ids[2])  # not the full backup: its own copy
    assert f"shared with backup(s) {ids[0]}, {ids[2]}" in str(raised.value)
    store.verify(full.id)
    assert store.shared_files(full.id) == 0
    assert store.shared_files(ids[0]) == 4


def test_a_full_backup_keeps_its_objects_in_its_own_folder_and_frees_them_when_deleted(
    installation: Path,
) -> None:
    store, scope = store_and_scope(installation)
    shared = store.create(scope)
    full = store.create(scope, full=True)
    own = stored_copy(full.path, "config/app.yaml")
    assert own.parent.parent == full.path / "objects"
    assert own.read_bytes() == stored_copy(shared.path, "config/app.yaml").read_bytes()
    assert full.copied_bytes == shared.copied_bytes  # every file read and stored again
    following = store.create(scope)  # refers to the shared objects, not the full backup's
    assert stored_copy(following.path, "config/app.yaml") == stored_copy(
        shared.path, "config/app.yaml"
    )
    assert following.copied_bytes == 0
    store.delete(full.id)
    assert not own.exists()
    store.verify(following.id)


def test_format_3_backups_are_still_listed_verified_restored_and_pruned(
    installation: Path,
) -> None:
    store, scope = store_and_scope(installation)
    first = store.create(scope)
    second = store.create(scope)
    for info in (first, second):
        as_older_format(info.path, 3)
    for info in (first, second):
        assert store.read_manifest(info.id).format == 3
    assert [b.id for b in store.list()] == [first.id, second.id]
    assert store.shared_files(second.id) == 4  # hard-linked, as format 3 shared files
    store.verify(second.id)
    before = tree_digest(installation)
    (installation / "config" / "app.yaml").write_text("migrated")
    (installation / "added").mkdir()
    store.restore(second.id, installation)
    assert tree_digest(installation) == before
    damaged = second.path / "tree" / "config" / "nested" / "deep.json"
    intact = damaged.read_bytes()
    damaged.write_bytes(b"X" + intact[1:])  # in place: both hard links see it
    with pytest.raises(DamagedBackupError) as raised:
        store.verify(second.id)
    assert raised.value.affected == (first.id,)
    damaged.write_bytes(intact)
    third = store.create(scope)  # no format-4 backup before it: everything is stored
    assert third.copied_bytes > 0
    store.prune(1)
    assert store.ids() == [third.id]
    store.verify(third.id)
    for rel, entry in store.read_manifest(third.id).decoded().items():
        if entry.type == "file":
            assert object_path(store.backups_dir / "objects", entry.hash).is_file(), rel


def test_format_4_backups_with_named_fields_are_still_read_and_referenced(
    installation: Path,
) -> None:
    """Format 5 writes entries as arrays; a format-4 manifest (objects of named fields) is
    still verified and restored, and the next backup reuses its objects."""
    store, scope = store_and_scope(installation)
    old = store.create(scope)
    as_older_format(old.path, 4)
    raw = (old.path / "manifest.json").read_bytes()
    assert b'"type": "file"' in raw
    assert store.read_manifest(old.id).format == 4
    store.verify(old.id)
    before = tree_digest(installation)
    (installation / "config" / "app.yaml").write_text("migrated")
    store.restore(old.id, installation)
    assert tree_digest(installation) == before
    new = store.create(scope)  # the unchanged files: the format-4 backup's objects
    assert 0 < new.copied_bytes < old.copied_bytes  # the restored file alone is new
    manifest = store.read_manifest(new.id)
    assert manifest.format == 5
    assert b'"type":"file"' not in (new.path / "manifest.json").read_bytes()
    assert store.shared_files(new.id) > 0
    assert [b.id for b in store.list()] == [old.id, new.id]


def test_taking_a_backup_loads_no_pydantic_restore_or_snapshot_code(installation: Path) -> None:
    """Start-up counts for a command as short as an unchanged backup (issue 16)."""
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from dopemux_update._backup._store import BackupStore\n"
        "from dopemux_update._backup._tree import Scope\n"
        "root = Path(sys.argv[1])\n"
        "state = root / '.dopemux' / 'update'\n"
        "store = BackupStore(state / 'backups')\n"
        "store.create(Scope.for_installation(root, state_dir=state))\n"
        "store.create(Scope.for_installation(root, state_dir=state))\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(installation)],
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = set(done.stdout.split())
    unwanted = {"pydantic", "dopemux_update._backup._restore", "dopemux_update._backup._snapshot"}
    assert not unwanted & loaded
