"""Restores against a hostile world: crafted manifests, odd trees, SQLite that fights back.

Issue 10 items 2, 3 and 9; issue 11 item 5, and the restore side of items 2 and 4.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
import xxhash

from conftest import MigrationWriter, as_older_format, stored_copy
from dopemux_update import BackupError, BackupStore, Scope
from dopemux_update._backup import _sqlite as sqlite_module
from dopemux_update._backup._manifest import (
    _FORMATS,
    _parse_manifest,
    _plainly_valid,
    object_path,
    sign_manifest,
)
from dopemux_update._backup._sparse import copy_sparse
from dopemux_update._backup._tree import TreeEntry, walk
from support.manifests import encoded, named

NOBODY = 65534


def store_and_scope(root: Path, **kw: Any) -> tuple[BackupStore, Scope]:
    state = root / ".dopemux" / "update"
    scope = Scope.for_installation(root, state_dir=state, migrations_dir=root / "migrations", **kw)
    return BackupStore(state / "backups"), scope


def rewrite_manifest(
    store: BackupStore, backup_id: str, edit: Callable[[dict[str, Any]], None], *, sign: bool = True
) -> None:
    """Change a backup's manifest as an attacker would: checksum recomputed, and the MAC
    too when ``sign`` (an attacker who also stole the installation's key)."""
    folder = store.backups_dir / backup_id
    document = named((folder / "manifest.json").read_bytes())
    edit(document)
    raw = encoded(document)
    (folder / "manifest.json").write_bytes(raw)
    (folder / "manifest.xxh3").write_text(xxhash.xxh3_128_hexdigest(raw))
    if sign:
        (folder / "manifest.hmac").write_bytes(sign_manifest(store.backups_dir, raw))


def settings(db: Path) -> dict[str, int | str]:
    with closing(sqlite3.connect(db)) as conn:
        return sqlite_module.read_settings(conn)


def rows(db: Path) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT * FROM notes ORDER BY id").fetchall()


def make_wal_database(db: Path) -> None:
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        conn.executemany("INSERT INTO notes (body) VALUES (?)", [(f"n{i}",) for i in range(50)])
        conn.execute("PRAGMA user_version=7")


# -- sparse copies --------------------------------------------------------------------------


def make_sparse(path: Path, size: int = 64 << 20) -> None:
    with path.open("wb") as handle:
        handle.truncate(size)
        handle.seek(8 << 20)
        handle.write(b"middle")
        handle.seek(size - 5)
        handle.write(b"end!\n")


@pytest.mark.parametrize("hashed", [True, False])
def test_copy_sparse_writes_only_data_and_keeps_holes(tmp_path: Path, hashed: bool) -> None:
    source = tmp_path / "sparse"
    make_sparse(source)
    copy = tmp_path / "copy"
    digest = xxhash.xxh3_128()
    src = os.open(source, os.O_RDONLY)
    dst = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        copy_sparse(src, dst, source.stat().st_size, digest=digest if hashed else None)
    finally:
        os.close(src)
        os.close(dst)
    assert copy.read_bytes() == source.read_bytes()
    if hashed:
        assert digest.hexdigest() == xxhash.xxh3_128_hexdigest(source.read_bytes())
    assert copy.stat().st_blocks * 512 < 1 << 20


def test_a_restored_sparse_file_keeps_its_holes(installation: Path) -> None:
    live = installation / "data.img"
    make_sparse(live)
    store, scope = store_and_scope(installation)
    info = store.create(scope)
    stored = stored_copy(info.path, "data.img")
    assert stored.stat().st_blocks * 512 < 1 << 20  # stored sparse
    live.unlink()
    store.restore(info.id, installation)
    assert live.stat().st_size == 64 << 20
    assert live.stat().st_blocks * 512 < 1 << 20
    assert xxhash.xxh3_128_hexdigest(live.read_bytes()) == xxhash.xxh3_128_hexdigest(
        stored.read_bytes()
    )


# -- crafted manifests (issue 11 item 5) ----------------------------------------------------


def evil_manifest(installation: Path, outside: Path) -> tuple[BackupStore, str]:
    """A backup whose manifest has ``evil`` as a symlink to ``outside`` and a file under it."""
    store, scope = store_and_scope(installation)
    info = store.create(scope)
    payload = b"#!/bin/sh\necho pwned\n"
    stored = object_path(store.backups_dir / "objects", xxhash.xxh3_128_hexdigest(payload))
    stored.parent.mkdir(exist_ok=True)
    stored.write_bytes(payload)  # what the forged entry names is there, and intact

    def edit(document: dict[str, Any]) -> None:
        document["entries"]["evil"] = {"type": "symlink", "target": str(outside)}
        document["entries"]["evil/pwned.sh"] = {
            "type": "file",
            "mode": 0o755,
            "size": len(payload),
            "hash": xxhash.xxh3_128_hexdigest(payload),
        }

    rewrite_manifest(store, info.id, edit, sign=False)
    return store, info.id


def test_a_manifest_rewritten_without_the_key_is_not_authentic(
    installation: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    store, backup_id = evil_manifest(installation, outside)
    with pytest.raises(BackupError, match="manifest is not authentic"):
        store.verify(backup_id)
    with pytest.raises(BackupError, match="manifest is not authentic"):
        store.restore(backup_id, installation)
    assert not list(outside.iterdir())
    key = installation / ".dopemux" / "update" / "backup.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(key.read_bytes()) == 32


def test_backups_restore_of_a_forged_manifest_exits_2_and_writes_nothing(
    installation: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    _, backup_id = evil_manifest(installation, outside)
    done = subprocess.run(
        [
            *(sys.executable, "-m", "dopemux_update", "backups", "restore", backup_id),
            *("--yes", "--root", str(installation)),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "not authentic" in done.stderr
    assert "Traceback" not in done.stderr
    assert not list(outside.iterdir())
    assert not (installation / "evil").exists()


def test_entries_under_one_of_the_manifests_own_symlinks_are_refused_even_when_signed(
    installation: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    store, backup_id = evil_manifest(installation, outside)
    rewrite_manifest(store, backup_id, lambda document: None)  # signed with the stolen key
    with pytest.raises(BackupError, match="sits under 'evil', which is a symlink"):
        store.restore(backup_id, installation)
    assert not list(outside.iterdir())


def test_a_walk_never_follows_a_folder_swapped_for_a_symlink_while_it_walks(
    installation: Path, tmp_path: Path
) -> None:
    """A folder listed as a folder, then replaced by a symlink before the walk opens it, is
    refused (the walk opens each folder below the root without following a symlink); what
    the symlink leads to is never listed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("not the installation's")
    walked = walk(Scope(installation))
    for item in walked:
        if item.rel == "config":
            shutil.rmtree(installation / "config")
            (installation / "config").symlink_to(outside)
            break
    seen: list[TreeEntry] = []
    with pytest.raises(OSError, match="config"):
        seen.extend(walked)  # what it yields before it refuses stays in ``seen``
    assert not [item.rel for item in seen if item.rel.startswith("config/")]


def test_the_restore_never_writes_through_a_symlink_the_manifest_does_not_name(
    installation: Path, tmp_path: Path
) -> None:
    """An include-only scope whose parent folder entry was dropped, and a live symlink there."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (installation / "evil").mkdir()
    (installation / "evil" / "pwned.sh").write_text("harmless\n")
    store, scope = store_and_scope(installation, include=["evil/pwned.sh"])
    info = store.create(scope)
    rewrite_manifest(store, info.id, lambda document: document["entries"].pop("evil"))
    shutil.rmtree(installation / "evil")
    (installation / "evil").symlink_to(outside)
    with pytest.raises(BackupError, match="evil is not a folder"):
        store.restore(info.id, installation)
    assert not list(outside.iterdir())


def _entry(**fields: Any) -> dict[str, Any]:
    return {"type": "file", "mode": 0o644, "size": 0, "hash": "", **fields}


BAD_MANIFESTS: dict[str, Callable[[dict[str, Any]], None]] = {
    "negative size": lambda d: d["entries"].update({"x": _entry(size=-1)}),
    "mode beyond 0o7777": lambda d: d["entries"].update({"x": _entry(mode=0o10000)}),
    "unknown type": lambda d: d["entries"].update({"x": _entry(type="device")}),
    "unknown field": lambda d: d["entries"].update({"x": _entry(setuid_root=True)}),
    "NUL in a name": lambda d: d["entries"].update({"x\x00y": _entry()}),
    "a dot component": lambda d: d["entries"].update({"config/./x": _entry()}),
    "an empty component": lambda d: d["entries"].update({"config//x": _entry()}),
    "a parent component": lambda d: d["entries"].update({"config/../../x": _entry()}),
    "a duplicate after decoding": lambda d: d["entries"].update(
        {"\x00b64:" + "c2VjcmV0LmVudg==": d["entries"]["secret.env"]}
    ),
    "a hard link to a folder": lambda d: d["entries"].update(
        {"x": {"type": "hardlink", "target": "config"}}
    ),
    "a hard link to a later file": lambda d: d["entries"].update(
        {"a-link": {"type": "hardlink", "target": "secret.env"}}
    ),
    "an unsafe SQLite setting": lambda d: d["entries"].update(
        {"x": _entry(type="sqlite", sqlite={"journal_mode": "wal; DROP TABLE t"})}
    ),
    "SQLite settings on a hard link": lambda d: d["entries"].update(
        {"z-link": {"type": "hardlink", "target": "secret.env", "sqlite": {"user_version": 1}}}
    ),
    "SQLite settings on a folder": lambda d: d["entries"]["config"].update(
        {"sqlite": {"user_version": 1}}
    ),
    "a symlink to nothing": lambda d: d["entries"].update({"x": {"type": "symlink"}}),
    "a hash that names no object": lambda d: d["entries"]["secret.env"].update(
        {"hash": "../../../../etc/passwd"}
    ),
    "an owner below -1": lambda d: d["entries"]["config"].update({"uid": -2}),
    "a negative mode": lambda d: d["entries"]["config"].update({"mode": -1}),
    "an unknown format": lambda d: d.update({"format": 99}),
    # The entries are first checked all at once, with their names joined: none may slip by.
    "an absolute name": lambda d: d["entries"].update({"/etc/x": _entry()}),
    "a name ending with a slash": lambda d: d["entries"].update({"config/x/": _entry()}),
    "an empty name": lambda d: d["entries"].update({"": _entry()}),
    "a dot name": lambda d: d["entries"].update({".": _entry(type="dir")}),
    "a parent name": lambda d: d["entries"].update({"..": _entry(type="dir")}),
    "two hashes in one": lambda d: d["entries"]["secret.env"].update(
        {"hash": "0" * 32 + "\n" + "0" * 32}
    ),
    "an upper-case hash": lambda d: d["entries"]["secret.env"].update({"hash": "A" * 32}),
    "a NUL in a symlink's target": lambda d: d["entries"]["link-to-app"].update(
        {"target": "config/app.yaml\x00"}
    ),
    "SQLite settings on a file": lambda d: d["entries"]["secret.env"].update(
        {"sqlite": {"user_version": 1}}
    ),
    "a file owned by group -2": lambda d: d["entries"]["secret.env"].update({"gid": -2}),
}


@pytest.mark.parametrize("problem", sorted(BAD_MANIFESTS))
def test_a_signed_manifest_with_anything_odd_is_refused_and_changes_nothing(
    installation: Path, problem: str
) -> None:
    store, scope = store_and_scope(installation)
    info = store.create(scope)
    rewrite_manifest(store, info.id, BAD_MANIFESTS[problem])
    (installation / "config" / "app.yaml").write_text("migrated")
    with pytest.raises(BackupError, match=r"manifest (is unreadable|names a path outside)"):
        store.restore(info.id, installation)
    assert (installation / "config" / "app.yaml").read_text() == "migrated"


def test_the_check_of_all_entries_at_once_passes_what_a_backup_writes_and_no_odd_one(
    installation: Path,
) -> None:
    """A manifest's entries are checked all at once first, then one by one only if that
    check does not pass them: it must pass an ordinary manifest (else every read pays for
    the slow check) and none of the odd manifests above (the slow check refuses them)."""
    with closing(sqlite3.connect(installation / ".dopemux" / "service.db")) as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.commit()
    store, scope = store_and_scope(installation)
    raw = (store.create(scope).path / "manifest.json").read_bytes()

    def passed(document: dict[str, Any]) -> bool | None:
        if document["format"] not in _FORMATS:
            return None  # refused before the entries are checked
        try:
            manifest = _parse_manifest(json.loads(encoded(document)), "id")
            entries = manifest.decoded()
        except (BackupError, ValueError):
            return None  # refused before the entries are checked
        return _plainly_valid(manifest, entries, objects=manifest.format >= 4)

    ordinary = named(raw)
    assert {e["type"] for e in ordinary["entries"].values()} >= {"file", "dir", "symlink", "sqlite"}
    assert passed(ordinary) is True
    for problem, change in BAD_MANIFESTS.items():
        document = named(raw)
        change(document)
        assert passed(document) is not True, problem


def test_duplicate_keys_in_the_manifest_json_are_refused(installation: Path) -> None:
    store, scope = store_and_scope(installation)
    info = store.create(scope)
    folder = info.path
    raw = (folder / "manifest.json").read_bytes()
    twice = b'"secret.env":["dir",448,0,0,"","",false,[],false,-1,-1,null],'
    raw = raw.replace(b'"entries":{', b'"entries":{' + twice, 1)
    (folder / "manifest.json").write_bytes(raw)
    (folder / "manifest.xxh3").write_text(xxhash.xxh3_128_hexdigest(raw))
    (folder / "manifest.hmac").write_bytes(sign_manifest(store.backups_dir, raw))
    with pytest.raises(BackupError, match="appears twice"):
        store.read_manifest(info.id)


def test_a_format_2_backup_without_a_mac_is_still_restored(installation: Path) -> None:
    store, scope = store_and_scope(installation)
    info = store.create(scope)

    as_older_format(info.path, 2)
    (installation / "config" / "app.yaml").write_text("migrated")
    store.restore(info.id, installation)
    assert (installation / "config" / "app.yaml").read_text() == "# keep me\nlog_level: info\n"


def test_a_format_3_backup_without_its_mac_is_refused(installation: Path) -> None:
    store, scope = store_and_scope(installation)
    info = store.create(scope)
    (info.path / "manifest.hmac").unlink()
    with pytest.raises(BackupError, match=r"not authentic \(manifest.hmac is missing\)"):
        store.restore(info.id, installation)


# -- recovery that must always end (issue 10 item 3) -------------------------------------------


def test_a_new_folder_holding_a_git_clone_is_removed_entirely(installation: Path) -> None:
    (installation / ".git").mkdir()
    (installation / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    store, scope = store_and_scope(installation)
    info = store.create(scope)
    clone = installation / "vendor" / "plugin"
    (clone / ".git" / "objects" / "ab").mkdir(parents=True)
    (clone / ".git" / "objects" / "ab" / "cdef").write_bytes(b"blob")
    (clone / ".git" / "objects" / "ab" / "cdef").chmod(0o444)
    (clone / "README").write_text("plugin\n")
    report = store.restore(info.id, installation)
    assert not (installation / "vendor").exists()
    assert "vendor" in report.removed
    assert (installation / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert (installation / ".dopemux" / "update" / "backups" / info.id).is_dir()


def test_include_and_a_folder_a_migration_replaced_by_a_symlink(
    installation: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    store, scope = store_and_scope(installation, include=["config/app.yaml"])
    info = store.create(scope)
    shutil.rmtree(installation / "config")
    (installation / "config").symlink_to(elsewhere)
    store.restore(info.id, installation)
    assert (installation / "config").is_dir()
    assert not (installation / "config").is_symlink()
    assert (installation / "config" / "app.yaml").read_text() == "# keep me\nlog_level: info\n"
    assert not list(elsewhere.iterdir())


def test_file_and_database_names_near_name_max_are_restored(installation: Path) -> None:
    long = installation / ("n" * 251 + ".txt")
    long.write_text("original\n")
    (installation / "config" / ("é" * 127)).write_text("two-byte name\n")  # 254 bytes
    db = installation / ("d" * 236 + ".db")  # its -journal is 247 bytes: SQLite's limit
    make_wal_database(db)
    store, scope = store_and_scope(installation)
    info = store.create(scope)
    long.write_text("migrated, longer\n")
    (installation / "config" / ("é" * 127)).unlink()
    db.unlink()
    store.restore(info.id, installation)
    assert len(rows(db)) == 50
    assert long.read_text() == "original\n"
    assert (installation / "config" / ("é" * 127)).read_text() == "two-byte name\n"
    assert not list(installation.rglob(".dmx-restore-*"))


@pytest.fixture
def nobody_home() -> Iterator[Path]:
    """A folder the unprivileged uid 65534 can reach and owns."""
    folder = Path(tempfile.mkdtemp(prefix="dmx-nobody-", dir="/tmp"))
    folder.chmod(0o755)
    os.chown(folder, NOBODY, NOBODY)
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


PRELUDE = """
import json, os, sqlite3, sys
from pathlib import Path
from dopemux_update import BackupStore, Scope
root = Path(sys.argv[1]) / "install"
state = root / ".dopemux" / "update"
(root / "data").mkdir(parents=True)
store = BackupStore(state / "backups")
scope = Scope.for_installation(root, state_dir=state)
"""


def as_nobody(script: str, folder: Path) -> dict[str, Any]:
    """Run ``script`` (which prints one JSON line) as uid 65534 in ``folder``, after
    :data:`PRELUDE` (``root``, ``store`` and ``scope`` of an installation in it)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a step as an unprivileged user")
    done = subprocess.run(
        [
            *("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"),
            *(sys.executable, "-c", PRELUDE + textwrap.dedent(script), str(folder)),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_a_folder_made_unreadable_is_restored_when_not_root(nobody_home: Path) -> None:
    result = as_nobody(
        """
(root / "data" / "inner").mkdir()
(root / "data" / "inner" / "f.txt").write_text("original")
(root / "data" / "g.txt").write_text("original")
info = store.create(scope)
(root / "data" / "inner" / "f.txt").write_text("migrated")
(root / "data" / "added.txt").write_text("added")
(root / "data").chmod(0)
store.restore(info.id, root)
out = {"mode": oct((root / "data").stat().st_mode & 0o7777)}
(root / "data").chmod(0o755)
out["f"] = (root / "data" / "inner" / "f.txt").read_text()
out["added"] = (root / "data" / "added.txt").exists()
print(json.dumps(out))
""",
        nobody_home,
    )
    assert result == {"mode": "0o755", "f": "original", "added": False}


def test_a_database_made_read_only_is_restored_when_not_root(nobody_home: Path) -> None:
    result = as_nobody(
        """
db = root / "data" / "app.db"
with sqlite3.connect(db) as conn:
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES ('before')")
conn.close()
info = store.create(scope)
with sqlite3.connect(db) as conn:
    conn.execute("UPDATE t SET x = 'after'")
conn.close()
db.chmod(0o444)
store.restore(info.id, root)
with sqlite3.connect(db) as conn:
    value = conn.execute("SELECT x FROM t").fetchone()[0]
conn.close()
print(json.dumps({"value": value, "mode": oct(db.stat().st_mode & 0o777)}))
""",
        nobody_home,
    )
    assert result == {"value": "before", "mode": "0o644"}


# -- SQLite that fights back (issue 10 items 2 and 9) ----------------------------------------


def test_a_database_whose_page_size_a_migration_changed_is_put_back(installation: Path) -> None:
    db = installation / "app.db"
    make_wal_database(db)
    store, scope = store_and_scope(installation)
    info = store.create(scope)
    before = rows(db)
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA page_size=8192")
        conn.execute("VACUUM")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("DELETE FROM notes WHERE id > 10")
    store.restore(info.id, installation)
    assert rows(db) == before
    assert settings(db)["page_size"] == 4096
    assert settings(db)["journal_mode"] == "wal"


def test_a_symlinked_wal_sidecar_is_never_written_through(
    installation: Path, tmp_path: Path
) -> None:
    db = installation / "app.db"
    make_wal_database(db)
    store, scope = store_and_scope(installation)
    info = store.create(scope)
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("DELETE FROM notes")
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    for suffix in ("-wal", "-journal"):
        Path(f"{db}{suffix}").symlink_to(victim)
    store.restore(info.id, installation)
    assert victim.read_bytes() == b"precious"
    assert len(rows(db)) == 50
    assert not Path(f"{db}-journal").is_symlink()


def test_the_sqlite_settings_of_the_backup_are_restored(installation: Path) -> None:
    db = installation / "app.db"
    make_wal_database(db)
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("PRAGMA application_id=42")
    store, scope = store_and_scope(installation)
    info = store.create(scope)
    wanted = settings(db)
    rewrite_manifest(
        store, info.id, lambda d: d["entries"]["app.db"].update({"sqlite": wanted})
    )  # as the capture side records them
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA user_version=9")
        conn.execute("PRAGMA application_id=43")
        conn.execute("PRAGMA auto_vacuum=1")
        conn.execute("VACUUM")
    assert settings(db) != wanted
    store.restore(info.id, installation)
    assert settings(db) == wanted


EXCLUSIVE_HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA locking_mode=EXCLUSIVE")
conn.execute("INSERT INTO notes (body) VALUES ('held')")
print("holding", flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def held_database(installation: Path) -> Iterator[Path]:
    db = installation / "app.db"
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    holder = subprocess.Popen(
        [sys.executable, "-c", EXCLUSIVE_HOLDER, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdin is not None
    try:
        assert holder.stdout.readline().strip() == "holding"
        yield db
    finally:
        holder.stdin.close()
        holder.wait(10)
        holder.stdout.close()


def test_a_database_held_exclusively_fails_the_backup_in_bounded_time_naming_it(
    installation: Path, held_database: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "BUSY_SECONDS", 0.3)
    store, scope = store_and_scope(installation)
    with pytest.raises(BackupError, match=r"app\.db is locked by another program"):
        store.create(scope)
    assert not store.ids()


@pytest.mark.anyio
async def test_a_cancelled_run_stops_waiting_for_a_held_database(
    installation: Path, held_database: Path, tmp_path: Path
) -> None:
    """The worker thread notices the cancellation between backup steps (BUSY_SECONDS is 30)."""
    started = time.monotonic()
    with anyio.move_on_after(0.3) as scope:
        await anyio.to_thread.run_sync(sqlite_module.capture, held_database, tmp_path / "copy")
    assert scope.cancelled_caught
    assert time.monotonic() - started < 10


def test_a_pool_thread_waiting_for_a_held_database_stops_when_told(
    held_database: Path, tmp_path: Path
) -> None:
    """Threads that are no anyio workers (the backup's copy pool) learn of a cancellation
    through an event; BUSY_SECONDS is 30 here."""
    cancelled = threading.Event()
    cancelled.set()
    started = time.monotonic()
    with pytest.raises(BackupError, match=r"app\.db was cancelled"):
        sqlite_module.capture(held_database, tmp_path / "copy", cancelled=cancelled)
    assert time.monotonic() - started < 10
    assert not (tmp_path / "copy-journal").exists()


# -- owners, hard links, unchanged files (issue 11 items 1, 2 and 4, restore side) ------------


def test_owners_of_files_folders_and_symlinks_are_put_back(installation: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root may give files to another user")
    store, scope = store_and_scope(installation)
    info = store.create(scope)

    def owned(document: dict[str, Any]) -> None:
        for rel in ("secret.env", "config", "config/app.yaml", "link-to-app"):
            document["entries"][rel].update({"uid": 1000, "gid": 1001})

    rewrite_manifest(store, info.id, owned)  # as the capture side records them
    (installation / "config" / "app.yaml").unlink()  # recreated by a migration: root-owned
    (installation / "config" / "app.yaml").write_text("migrated")
    (installation / "secret.env").chmod(0o4600)  # a set-id bit survives the chown below
    report = store.restore(info.id, installation)
    for rel in ("secret.env", "config", "config/app.yaml", "link-to-app"):
        found = (installation / rel).lstat()
        assert (found.st_uid, found.st_gid) == (1000, 1001), rel
    assert stat.S_IMODE((installation / "secret.env").stat().st_mode) == 0o600
    assert "secret.env" in report.fixed
    assert (installation / ".dopemux" / "data.txt").stat().st_uid == 0  # -1: left alone


def test_hard_links_are_restored_as_hard_links(installation: Path) -> None:
    (installation / "a.bin").write_bytes(b"shared")
    (installation / "b.bin").write_bytes(b"shared")
    store, scope = store_and_scope(installation)
    info = store.create(scope)
    rewrite_manifest(
        store,
        info.id,
        lambda d: d["entries"].update({"b.bin": {"type": "hardlink", "target": "a.bin"}}),
    )  # as the capture side records a second name of one inode
    assert stored_copy(info.path, "a.bin").read_bytes() == b"shared"  # one object for both
    (installation / "a.bin").write_bytes(b"edited")
    store.restore(info.id, installation)
    assert (installation / "a.bin").read_bytes() == b"shared"
    assert (installation / "a.bin").stat().st_ino == (installation / "b.bin").stat().st_ino
    assert not store.restore(info.id, installation).changed


def test_a_file_edited_keeping_size_and_mtime_is_put_back(installation: Path) -> None:
    path = installation / "config" / "app.yaml"
    store, scope = store_and_scope(installation)
    info = store.create(scope)
    before = path.stat()
    path.write_text("# keep me\nlog_level: dbug\n")  # same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # as cp -p / rsync -a leave it
    store.restore(info.id, installation)
    assert path.read_text() == "# keep me\nlog_level: info\n"


# -- end to end: a failed upgrade whose rollback meets these -----------------------------------


def upgrade(installation: Path, migrations: MigrationWriter) -> subprocess.CompletedProcess[str]:
    where = ("--root", str(installation), "--migrations", str(migrations.root))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dopemux_update", *args, *where],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )

    assert cli("stamp", "1.0").returncode == 0
    done = cli("upgrade", "--yes", "--json")
    assert cli("status").returncode == 0  # nothing left to recover
    return done


def test_a_rollback_puts_back_a_database_whose_page_size_changed_under_wal(
    installation: Path, migrations: MigrationWriter
) -> None:
    db = installation / "app.db"
    make_wal_database(db)
    before = rows(db)
    migrations.add(
        "v1.0_to_v1.1",
        "1_page_size.py",
        forward=(
            "import sqlite3\n"
            "conn = sqlite3.connect(project_root / 'app.db', isolation_level=None)\n"
            "for s in ('PRAGMA journal_mode=DELETE', 'PRAGMA page_size=8192', 'VACUUM',\n"
            "          'PRAGMA journal_mode=WAL', 'DELETE FROM notes WHERE id > 5'):\n"
            "    conn.execute(s)\n"
            "conn.close()\n"
            "return True"
        ),
    )
    migrations.add("v1.0_to_v1.1", "2_fails.py", forward="return False")
    done = upgrade(installation, migrations)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert rows(db) == before
    assert settings(db)["page_size"] == 4096


def test_a_rollback_removes_a_folder_a_failed_migration_cloned_a_repository_into(
    installation: Path, migrations: MigrationWriter
) -> None:
    migrations.add(
        "v1.0_to_v1.1",
        "1_clone.py",
        forward=(
            "clone = project_root / 'plugins' / 'extra'\n"
            "(clone / '.git' / 'refs').mkdir(parents=True)\n"
            "(clone / '.git' / 'HEAD').write_text('ref: refs/heads/main')\n"
            "(clone / 'plugin.py').write_text('pass')\n"
            "return False"
        ),
    )
    done = upgrade(installation, migrations)
    assert done.returncode == 1, done.stderr
    assert not (installation / "plugins").exists()
