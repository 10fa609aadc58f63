"""Exact means exact: what a backup captures, and what "identical" means (guarantee 13).

Each situation is built for real: ``cp -p``-style edits with ``os.utime``, files chowned to
another user (as root), hard links, a 2 GB sparse file made with ``truncate``, real SQLite
databases with their settings, and the CLI in a subprocess.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import xxhash

from conftest import MigrationWriter, stored_copy
from dopemux_update import BackupStore, OrchestrationPhase, Scope
from dopemux_update._backup import _sparse as sparse_module
from dopemux_update._backup._copy import copy_and_hash, copy_file, hash_file
from dopemux_update._backup._identical import differences
from dopemux_update._backup._snapshot import diff_snapshots, item_difference, take_snapshot

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another user needs root")


def store_and_scope(root: Path) -> tuple[BackupStore, Scope]:
    state = root / ".dopemux" / "update"
    scope = Scope.for_installation(root, state_dir=state, migrations_dir=root / "migrations")
    return BackupStore(state / "backups"), scope


def failing_upgrade(installation: Path, migrations: MigrationWriter, forward: str) -> Any:
    """Run 1.0 -> 1.1 where the only migration does ``forward`` and then fails."""
    migrations.add("v1.0_to_v1.1", "1_fail.py", forward=f"{forward}\nreturn False")

    async def run() -> Any:
        return await OrchestrationPhase(
            project_root=installation,
            migrations_dir=migrations.root,
            current_version="1.0",
            target_version="1.1",
        ).execute()

    result = anyio.run(run)
    assert not result.ok
    assert result.backup_id is not None
    return result


def rolled_back_identical(result: Any) -> None:
    assert (result.rolled_back, result.verified_identical) == ((), True)


def sql(db: Path, *statements: str) -> None:
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as connection:
        for statement in statements:
            connection.execute(statement).fetchall()


def cli(root: Path, *argv: str) -> tuple[int, dict[str, Any], str]:
    done = subprocess.run(
        [sys.executable, "-m", "dopemux_update", *argv, "--root", str(root), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.returncode, json.loads(done.stdout), done.stderr


def cli_text(root: Path, *argv: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "dopemux_update", *argv, "--root", str(root)],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


# -- 1: "unchanged" is decided on what no one can set back -----------------------------------


def test_an_edit_keeping_size_and_mtime_is_not_reverted_by_a_failed_upgrade(
    installation: Path, migrations: MigrationWriter
) -> None:
    config = installation / "config" / "app.yaml"
    store, scope = store_and_scope(installation)
    store.create(scope)  # an earlier backup holds the old content
    old = config.stat()
    edited = "# keep me\nlog_level: warn\n"  # the same size as before
    config.write_text(edited)
    os.utime(config, ns=(old.st_atime_ns, old.st_mtime_ns))  # as cp -p / rsync -a leave it
    assert config.stat().st_size == old.st_size
    result = failing_upgrade(
        installation, migrations, "(project_root / 'config/app.yaml').write_text('x')"
    )
    assert config.read_text() == edited  # the operator's edit, not the stale backup's copy
    rolled_back_identical(result)


def test_a_file_linked_from_the_previous_backup_is_recopied_after_an_edit(
    installation: Path,
) -> None:
    """The chain of backups keeps the live inode's signature: a third backup after a
    same-size, same-mtime edit does not share the second one's (stale) copy."""
    config = installation / "config" / "app.yaml"
    store, scope = store_and_scope(installation)
    store.create(scope)
    second = store.create(scope)  # links the first one's copy
    old = config.stat()
    config.write_text("# keep me\nlog_level: warn\n")
    os.utime(config, ns=(old.st_atime_ns, old.st_mtime_ns))
    third = store.create(scope)
    rel = "config/app.yaml"
    assert stored_copy(third.path, rel) != stored_copy(second.path, rel)
    assert stored_copy(third.path, rel).read_text() == "# keep me\nlog_level: warn\n"
    same = "config/nested/deep.json"
    assert stored_copy(third.path, same) == stored_copy(second.path, same)


# -- 2: owners -------------------------------------------------------------------------------


@as_root
def test_owners_are_captured_and_verified_identical_reports_a_changed_owner(
    installation: Path,
) -> None:
    os.chown(installation / "secret.env", 1000, 1000)
    os.chown(installation / "config", 1000, 1001)
    os.chown(installation / "link-to-app", 1002, 1002, follow_symlinks=False)
    store, scope = store_and_scope(installation)
    info = store.create(scope)
    entries = store.read_manifest(info.id).entries
    assert (entries["secret.env"].uid, entries["secret.env"].gid) == (1000, 1000)
    assert (entries["config"].uid, entries["config"].gid) == (1000, 1001)
    assert (entries["link-to-app"].uid, entries["link-to-app"].gid) == (1002, 1002)
    assert (entries["config/app.yaml"].uid, entries["config/app.yaml"].gid) == (0, 0)
    assert differences(store, info.id, installation) == []
    os.chown(installation / "secret.env", 0, 0)  # what a restore that ignores owners leaves
    assert differences(store, info.id, installation) == ["secret.env: owner 0:0, not 1000:1000"]


@as_root
def test_a_snapshot_compares_owners(installation: Path) -> None:
    before = take_snapshot(store_and_scope(installation)[1])
    os.chown(installation / "secret.env", 1000, 1000)
    diff = diff_snapshots(before, take_snapshot(store_and_scope(installation)[1]))
    assert [(c.path, c.what) for c in diff.changed] == [("secret.env", "owner 0:0 → 1000:1000")]


def test_owners_the_process_may_not_set_are_not_compared(installation: Path) -> None:
    """As any user but root, an owner the process cannot give is no difference (the restore
    cannot put it back either): the rule is defined once, in ``may_set_owner``."""
    snapshot = take_snapshot(store_and_scope(installation)[1])
    item = snapshot.items["secret.env"]
    other = type(item)(item.kind, item.mode, item.digest, uid=-1, gid=-1)
    assert item_difference(other, item) == []  # an unknown owner (an older backup)
    if os.geteuid() == 0:
        foreign = type(item)(item.kind, item.mode, item.digest, uid=4242, gid=4242)
        assert [d.aspect for d in item_difference(foreign, item)] == ["owner"]


@as_root
def test_a_rolled_back_in_place_edit_keeps_the_files_owner(
    installation: Path, migrations: MigrationWriter
) -> None:
    secret = installation / "secret.env"
    os.chown(secret, 1000, 1000)
    result = failing_upgrade(
        installation,
        migrations,
        "with open(project_root / 'secret.env', 'r+') as f:\n    f.write('TOKEN=xyz')",
    )
    assert secret.read_text() == "TOKEN=abc\n"
    rolled_back_identical(result)
    info = secret.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (1000, 1000, 0o600)


# -- 3: SQLite settings ----------------------------------------------------------------------


def settings_db(path: Path) -> None:
    sql(
        path,
        "PRAGMA page_size=8192",
        "PRAGMA auto_vacuum=INCREMENTAL",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, x TEXT)",
        "INSERT INTO t (x) VALUES ('a'), ('b')",
        "PRAGMA user_version=5",
        "PRAGMA application_id=4660",
        "PRAGMA journal_mode=WAL",
    )


def test_sqlite_settings_are_captured_without_changing_the_live_database(
    installation: Path,
) -> None:
    db = installation / "data.db"
    settings_db(db)
    raw, listing = db.read_bytes(), sorted(os.listdir(installation))
    store, scope = store_and_scope(installation)
    info = store.create(scope)
    entry = store.read_manifest(info.id).entries["data.db"]
    assert entry.sqlite == {
        "page_size": 8192,
        "journal_mode": "wal",
        "auto_vacuum": 2,
        "user_version": 5,
        "application_id": 4660,
    }
    assert db.read_bytes() == raw  # reading the journal mode did not switch it
    assert sorted(os.listdir(installation)) == listing  # no -wal/-shm left behind


def test_verified_identical_compares_journal_mode_page_size_and_ids(installation: Path) -> None:
    db = installation / "data.db"
    settings_db(db)
    store, scope = store_and_scope(installation)
    info = store.create(scope)
    assert differences(store, info.id, installation) == []
    sql(db, "PRAGMA journal_mode=DELETE")
    assert differences(store, info.id, installation) == [
        "data.db: PRAGMA journal_mode delete, not wal"
    ]
    sql(db, "PRAGMA journal_mode=WAL", "PRAGMA application_id=1")
    assert differences(store, info.id, installation) == [
        "data.db: PRAGMA application_id 1, not 4660"
    ]
    sql(db, "PRAGMA journal_mode=DELETE", "PRAGMA page_size=4096", "VACUUM")
    sql(db, "PRAGMA journal_mode=WAL", "PRAGMA application_id=4660")
    assert differences(store, info.id, installation) == ["data.db: PRAGMA page_size 4096, not 8192"]


def test_verify_snapshots_compare_sqlite_settings(tmp_path: Path) -> None:
    db = tmp_path / "data.db"
    settings_db(db)
    before = take_snapshot(Scope(tmp_path))
    sql(db, "PRAGMA journal_mode=DELETE", "PRAGMA page_size=4096", "PRAGMA auto_vacuum=0", "VACUUM")
    diff = diff_snapshots(before, take_snapshot(Scope(tmp_path)))
    assert [(c.table, c.what) for c in diff.databases] == [
        ("PRAGMA auto_vacuum", "2 → 0"),
        ("PRAGMA journal_mode", "wal → delete"),
        ("PRAGMA page_size", "8192 → 4096"),
    ]


def test_a_rolled_back_switch_from_wal_to_delete_is_wal_again(
    installation: Path, migrations: MigrationWriter
) -> None:
    db = installation / "data.db"
    settings_db(db)
    result = failing_upgrade(
        installation,
        migrations,
        "import sqlite3\n"
        "c = sqlite3.connect(project_root / 'data.db', isolation_level=None)\n"
        "c.execute('PRAGMA journal_mode=DELETE').fetchall()\n"
        "c.execute(\"INSERT INTO t (x) VALUES ('c')\")\n"
        "c.close()",
    )
    with contextlib.closing(sqlite3.connect(db)) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("SELECT count(*) FROM t").fetchone()[0] == 2
    rolled_back_identical(result)


# -- 4: hard links and sparse files ----------------------------------------------------------


def test_hard_links_are_stored_once_and_compared(installation: Path) -> None:
    data = installation / "data"
    data.mkdir()
    (data / "b.bin").write_bytes(os.urandom(100_000))
    os.link(data / "b.bin", data / "a.bin")
    os.link(data / "b.bin", data / "c.bin")
    os.link(data / "b.bin", installation.parent / "outside.bin")  # not in scope: no link
    store, scope = store_and_scope(installation)
    info = store.create(scope)
    entries = store.read_manifest(info.id).entries
    assert entries["data/a.bin"].type == "file"
    assert (entries["data/b.bin"].type, entries["data/b.bin"].target) == ("hardlink", "data/a.bin")
    assert (entries["data/c.bin"].type, entries["data/c.bin"].target) == ("hardlink", "data/a.bin")
    objects = [p for p in (store.backups_dir / "objects").rglob("*") if p.is_file()]
    assert stored_copy(info.path, "data/a.bin") in objects
    assert len(objects) == len({e.hash for e in entries.values() if e.hash})  # the data once
    assert info.copied_bytes < 150_000
    assert differences(store, info.id, installation) == []
    copy = data / "c.copy"
    shutil.copy2(data / "c.bin", copy)
    copy.replace(data / "c.bin")  # the same bytes, but a file of its own now
    found = differences(store, info.id, installation)
    assert found == ["data/c.bin: not a hard link to data/a.bin"]


def test_a_snapshot_compares_hard_links(installation: Path) -> None:
    (installation / "one").write_text("same")
    os.link(installation / "one", installation / "two")
    before = take_snapshot(store_and_scope(installation)[1])
    (installation / "two").unlink()
    (installation / "two").write_text("same")
    diff = diff_snapshots(before, take_snapshot(store_and_scope(installation)[1]))
    assert [(c.path, c.what) for c in diff.changed] == [("two", "hard link one → none")]


def test_a_rolled_back_migration_that_split_hard_links_joins_them_again(
    installation: Path, migrations: MigrationWriter
) -> None:
    (installation / "one").write_text("shared")
    os.link(installation / "one", installation / "two")
    result = failing_upgrade(
        installation,
        migrations,
        "(project_root / 'two').unlink()\n(project_root / 'two').write_text('split')",
    )
    assert (installation / "two").stat().st_ino == (installation / "one").stat().st_ino
    assert (installation / "two").read_text() == "shared"
    rolled_back_identical(result)


def test_a_2gb_sparse_file_is_stored_sparse_and_comes_back_sparse_and_identical(
    installation: Path,
) -> None:
    image = installation / "disk.img"
    truncate = shutil.which("truncate")
    assert truncate is not None
    subprocess.run([truncate, "-s", "2G", str(image)], check=True)
    with image.open("r+b") as handle:
        for offset in (0, 1 << 30, (2 << 30) - 4096):
            handle.seek(offset)
            handle.write(os.urandom(4096))
    if image.stat().st_blocks * 512 >= 1 << 20:
        pytest.skip("this file system does not keep holes")
    store, scope = store_and_scope(installation)
    info = store.create(scope)
    stored = stored_copy(info.path, "disk.img").stat()
    assert stored.st_size == 2 << 30
    assert stored.st_blocks * 512 < 1 << 20  # a few KB, not 2 GB
    assert info.copied_bytes < 1 << 20
    store.verify(info.id)
    expected = hash_file(image)
    image.unlink()
    store.restore(info.id, installation)
    back = image.stat()
    assert (back.st_size, back.st_blocks * 512 < 1 << 20) == (2 << 30, True)
    assert hash_file(image) == expected
    assert differences(store, info.id, installation) == []


def test_the_hash_of_a_sparse_file_is_the_hash_of_what_a_reader_sees(tmp_path: Path) -> None:
    sparse = tmp_path / "sparse"
    with sparse.open("wb") as handle:
        handle.truncate(3 << 20)
        handle.seek(1 << 20)
        handle.write(b"data" * 1000)
    expected = xxhash.xxh3_128_hexdigest(sparse.read_bytes())
    assert hash_file(sparse) == (expected, 3 << 20)
    assert copy_and_hash(sparse, tmp_path / "copy") == (expected, 3 << 20)
    assert (tmp_path / "copy").read_bytes() == sparse.read_bytes()


def test_a_large_file_copied_by_the_kernel_hashes_as_what_the_copy_holds(tmp_path: Path) -> None:
    source = tmp_path / "large.bin"
    source.write_bytes(os.urandom(3 << 20) + b"tail")  # past the kernel-copy size, uneven
    assert copy_and_hash(source, tmp_path / "copy", mode=0o400) == (
        xxhash.xxh3_128_hexdigest(source.read_bytes()),
        (3 << 20) + 4,
    )
    assert (tmp_path / "copy").read_bytes() == source.read_bytes()
    assert (tmp_path / "copy").stat().st_mode & 0o777 == 0o400


def test_copies_hashes_and_restores_find_holes_through_one_walker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sparse = tmp_path / "sparse"
    with sparse.open("wb") as handle:
        handle.truncate(3 << 20)
        handle.seek(1 << 20)
        handle.write(b"data" * 1000)
    if sparse.stat().st_blocks * 512 >= 3 << 20:
        pytest.skip("this file system does not keep holes")
    walked: list[int] = []
    walker = sparse_module.extents

    def counting(fd: int, size: int) -> Iterator[tuple[int, int]]:
        walked.append(size)
        return walker(fd, size)

    monkeypatch.setattr(sparse_module, "extents", counting)
    expected = xxhash.xxh3_128_hexdigest(sparse.read_bytes())
    assert hash_file(sparse) == (expected, 3 << 20)
    assert copy_and_hash(sparse, tmp_path / "copy") == (expected, 3 << 20)
    copy_file(sparse, tmp_path / "plain-copy")
    assert (tmp_path / "plain-copy").read_bytes() == sparse.read_bytes()
    assert walked == [3 << 20] * 3  # each went through the one SEEK_DATA/SEEK_HOLE walker


# -- 6: shared stored files ------------------------------------------------------------------


def test_backups_say_what_they_share_and_verify_names_every_backup_a_damage_affects(
    installation: Path,
) -> None:
    _, first, _ = cli(installation, "backups", "create")
    _, second, _ = cli(installation, "backups", "create")
    first_id, second_id = first["backup"]["id"], second["backup"]["id"]
    _, listed, _ = cli(installation, "backups", "list")
    shared = {b["id"]: b["shared_files"] for b in listed["backups"]}
    assert shared == {first_id: 4, second_id: 4}  # every file: nothing changed in between
    text = cli_text(installation, "backups", "list")
    assert "4 shared with other backups" in text
    assert "a damaged shared file damages every backup holding it" in text
    stored = stored_copy(Path(first["backup"]["path"]), "config/nested/deep.json")
    with stored.open("r+b") as handle:  # damage the one object both backups reference
        handle.write(b"X")
    code, verified, _ = cli(installation, "backups", "verify", first_id)
    assert (code, verified["ok"]) == (1, False)
    assert verified["damaged"] == ["config/nested/deep.json"]
    assert verified["affected"] == [second_id]
    assert second_id in verified["error"]


def test_a_full_backup_shares_nothing(installation: Path) -> None:
    _, first, _ = cli(installation, "backups", "create")
    code, full, _ = cli(installation, "backups", "create", "--full")
    assert code == 0
    _, listed, _ = cli(installation, "backups", "list")
    assert [b["shared_files"] for b in listed["backups"]] == [0, 0]
    own = stored_copy(Path(full["backup"]["path"]), "config/app.yaml")
    assert own.is_relative_to(Path(full["backup"]["path"]))  # its own objects
    shared = stored_copy(Path(first["backup"]["path"]), "config/app.yaml")
    assert own.read_bytes() == shared.read_bytes()
    assert own.stat().st_nlink == 1
    assert full["backup"]["copied_bytes"] == first["backup"]["copied_bytes"]


def test_upgrade_with_full_backup_copies_instead_of_linking(
    installation: Path, migrations: MigrationWriter
) -> None:
    migrations.add("v1.0_to_v1.1", "1_a.py")
    cli(installation, "backups", "create")
    code, result, err = cli(
        installation,
        "upgrade",
        "--from",
        "1.0",
        "--to",
        "1.1",
        "--yes",
        "--no-restart",
        "--full-backup",
        "--migrations",
        str(migrations.root),
    )
    assert code == 0, err
    store, _ = store_and_scope(installation)
    automatic = stored_copy(store.path_of(result["backup_id"]), "config/app.yaml")
    assert automatic.is_relative_to(store.path_of(result["backup_id"]))  # shares nothing
