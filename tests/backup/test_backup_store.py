"""Backups in depth: scope globs, special files, hard links, retention, space, tampering."""

from __future__ import annotations

import os
import socket
import stat
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
import xxhash
from structlog.testing import capture_logs

from conftest import MigrationWriter, stored_copy, tree_digest
from dopemux_update import (
    BackupError,
    BackupStore,
    InsufficientSpaceError,
    OrchestrationPhase,
    PreflightError,
    Scope,
    recover,
)
from dopemux_update._backup import _store as backup_module
from dopemux_update._backup._manifest import sign_manifest
from support.manifests import encoded, named


def store_and_scope(root: Path, **kw: Any) -> tuple[BackupStore, Scope]:
    state = root / ".dopemux" / "update"
    scope = Scope.for_installation(root, state_dir=state, migrations_dir=root / "migrations", **kw)
    return BackupStore(state / "backups"), scope


def test_exclude_globs_leave_paths_out_and_untouched(installation: Path) -> None:
    (installation / "logs").mkdir()
    (installation / "logs" / "app.log").write_text("line 1\n")
    (installation / "debug.log").write_text("debug\n")
    store, scope = store_and_scope(installation, exclude=["*.log"])
    info = store.create(scope)
    manifest = store.read_manifest(info.id)
    assert "logs/app.log" not in manifest.entries
    assert "debug.log" not in manifest.entries
    (installation / "logs" / "app.log").write_text("line 1\nline 2\n")
    (installation / "config" / "app.yaml").write_text("changed")
    store.restore(info.id, installation)
    assert (installation / "logs" / "app.log").read_text() == "line 1\nline 2\n"
    assert (installation / "config" / "app.yaml").read_text() == "# keep me\nlog_level: info\n"


def test_include_globs_limit_the_backup_and_the_restore(installation: Path) -> None:
    store, scope = store_and_scope(installation, include=["config/**"])
    info = store.create(scope)
    entries = store.read_manifest(info.id).decoded()
    assert set(entries) == {"config", "config/app.yaml", "config/nested", "config/nested/deep.json"}
    (installation / "config" / "added.txt").write_text("new")
    (installation / "secret.env").write_text("TOKEN=changed\n")
    store.restore(info.id, installation)
    assert not (installation / "config" / "added.txt").exists()
    assert (installation / "secret.env").read_text() == "TOKEN=changed\n"  # out of scope


def test_bad_glob_patterns_are_refused_before_anything_runs(
    installation: Path, migrations: MigrationWriter
) -> None:
    migrations.add("v1.0_to_v1.1", "1_a.py")
    with pytest.raises(PreflightError, match="invalid glob"):
        OrchestrationPhase(
            project_root=installation,
            migrations_dir=migrations.root,
            current_version="1.0",
            backup_exclude=["[z-a]"],
        )


def test_fifos_and_sockets_are_skipped_with_a_warning_and_left_alone(installation: Path) -> None:
    fifo = installation / "service.fifo"
    os.mkfifo(fifo)
    sock_path = installation / "service.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock_path))
    try:
        store, scope = store_and_scope(installation)
        with capture_logs() as logs:
            info = store.create(scope)
        skipped = {e["path"]: e["kind"] for e in logs if e["event"] == "backup.skipped"}
        assert skipped == {"service.fifo": "fifo", "service.sock": "socket"}
        before = tree_digest(installation)
        (installation / "config" / "app.yaml").write_text("changed")
        store.restore(info.id, installation)
        assert stat.S_ISFIFO(fifo.lstat().st_mode)
        assert stat.S_ISSOCK(sock_path.lstat().st_mode)
        assert tree_digest(installation) == before
    finally:
        server.close()


def test_an_unchanged_file_shares_the_previous_backups_object(installation: Path) -> None:
    store, scope = store_and_scope(installation)
    first = store.create(scope)
    (installation / "config" / "app.yaml").write_text("changed since the first backup")
    second = store.create(scope)
    same = "config/nested/deep.json"
    changed = "config/app.yaml"
    assert stored_copy(first.path, same) == stored_copy(second.path, same)
    assert stored_copy(first.path, changed) != stored_copy(second.path, changed)
    assert second.copied_bytes == len("changed since the first backup")
    # Deleting the first backup leaves the second whole.
    store.delete(first.id)
    store.verify(second.id)


def test_prune_keeps_the_newest_and_protected_backups(installation: Path) -> None:
    store, scope = store_and_scope(installation)
    ids = [store.create(scope).id for _ in range(5)]
    deleted = store.prune(2, protect={ids[0]})
    assert deleted == ids[1:3]
    assert store.ids() == [ids[0], ids[3], ids[4]]


def test_a_successful_update_prunes_old_backups_but_not_one_needing_recovery(
    installation: Path, migrations: MigrationWriter
) -> None:
    migrations.add("v1.0_to_v1.1", "1_a.py", backward="return False")
    migrations.add("v1.0_to_v1.1", "2_b.py", forward="return False")
    migrations.add("v1.1_to_v1.2", "1_c.py")

    async def run(current: str, target: str, force: bool = False) -> Any:
        return await OrchestrationPhase(
            project_root=installation,
            migrations_dir=migrations.root,
            current_version=current,
            target_version=target,
            keep_backups=1,
            force=force,
        ).execute()

    stuck = anyio.run(run, "1.0", "1.1")
    assert stuck.needs_recovery
    assert anyio.run(recover, installation).action == "restored"
    assert anyio.run(run, "1.1", "1.2").ok
    assert anyio.run(run, "1.1", "1.2", True).ok  # recorded version forced aside: a second run
    store, _ = store_and_scope(installation)
    remaining = store.ids()
    assert stuck.backup_id in remaining
    assert len(remaining) == 2


def test_not_enough_space_refuses_before_any_migration_runs(
    installation: Path, migrations: MigrationWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrations.add(
        "v1.0_to_v1.1", "1_a.py", forward="(project_root / 'x').write_text('x')\nreturn True"
    )
    monkeypatch.setattr(backup_module, "_free_space", lambda _: 1024)
    before = tree_digest(installation)

    async def run() -> None:
        await OrchestrationPhase(
            project_root=installation, migrations_dir=migrations.root, current_version="1.0"
        ).execute()

    with pytest.raises(InsufficientSpaceError, match="not enough free space"):
        anyio.run(run)
    assert migrations.calls_made() == []
    assert tree_digest(installation) == before
    backups = installation / ".dopemux" / "update" / "backups"
    assert not backups.exists() or not any(backups.iterdir())  # no partial backup either


def test_a_tampered_manifest_is_detected(installation: Path) -> None:
    store, scope = store_and_scope(installation)
    info = store.create(scope)
    manifest = info.path / "manifest.json"
    raw = manifest.read_bytes()
    assert b'"file",384,' in raw
    manifest.write_bytes(raw.replace(b'"file",384,', b'"file",511,', 1))
    with pytest.raises(BackupError, match=r"manifest\.json is damaged"):
        store.verify(info.id)


def test_a_manifest_naming_paths_outside_the_root_is_refused(installation: Path) -> None:
    store, scope = store_and_scope(installation)
    info = store.create(scope)
    manifest = info.path / "manifest.json"
    document = named(manifest.read_bytes())
    document["entries"]["../escaped"] = document["entries"]["secret.env"]
    raw = encoded(document)
    manifest.write_bytes(raw)
    (info.path / "manifest.xxh3").write_text(xxhash.xxh3_128_hexdigest(raw))
    (info.path / "manifest.hmac").write_bytes(sign_manifest(store.backups_dir, raw))
    with pytest.raises(BackupError, match="outside the installation"):
        store.restore(info.id, installation)
    assert not (installation.parent / "escaped").exists()


def test_restore_verifies_what_it_uses_before_changing_anything(installation: Path) -> None:
    store, scope = store_and_scope(installation)
    info = store.create(scope)
    stored = stored_copy(info.path, "config/app.yaml")
    stored.write_bytes(b"X" + stored.read_bytes()[1:])
    (installation / "config" / "app.yaml").write_text("migrated")
    (installation / "added.txt").write_text("added")
    with pytest.raises(BackupError, match=r"config/app\.yaml"):
        store.restore(info.id, installation)
    assert (installation / "added.txt").exists()  # nothing was changed
    assert (installation / "config" / "app.yaml").read_text() == "migrated"


def test_a_restore_of_an_unchanged_tree_changes_nothing(installation: Path) -> None:
    store, scope = store_and_scope(installation)
    info = store.create(scope)
    report = store.restore(info.id, installation)
    assert not report.changed


def test_restore_is_idempotent(installation: Path) -> None:
    store, scope = store_and_scope(installation)
    info = store.create(scope)
    before = tree_digest(installation)
    (installation / "config" / "app.yaml").write_text("migrated")
    (installation / "new").mkdir()
    store.restore(info.id, installation)
    store.restore(info.id, installation)
    assert tree_digest(installation) == before


def test_a_backup_leaves_the_installations_access_times_as_they_were(installation: Path) -> None:
    """Reading a file to back it up does not update its access time (``O_NOATIME``): the
    installation is left as it was, and no inode is written for each file read."""
    probe = installation / "probe.bin"
    probe.write_bytes(b"SQLite format 3\x00" + b"x" * 200)
    week_ago = time.time() - 7 * 86400
    os.utime(probe, (week_ago, week_ago))
    probe.read_bytes()  # an ordinary read: does this file system record access times?
    if probe.stat().st_atime == week_ago:
        pytest.skip("this file system does not update access times (noatime)")
    files = [path for path in installation.rglob("*") if path.is_file()]
    for path in files:
        os.utime(path, (week_ago, path.stat().st_mtime))
    store, scope = store_and_scope(installation)
    store.create(scope)
    changed = [path.name for path in files if path.stat().st_atime != week_ago]
    assert changed == []
