"""SQLite databases in use: captured and restored through the backup API, WAL and all."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from conftest import MigrationWriter, stored_copy, tree_digest
from dopemux_update import BackupStore, OrchestrationPhase, Scope

pytestmark = pytest.mark.anyio

SERVICE = r"""
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("PRAGMA wal_autocheckpoint=0")  # keep every page in the WAL
conn.execute("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT)")
conn.executemany("INSERT INTO notes (body) VALUES (?)", [(f"note {i}",) for i in range(200)])
print("ready", flush=True)
for line in sys.stdin:
    command = line.strip()
    if command == "count":
        print(conn.execute("SELECT count(*) FROM notes").fetchone()[0], flush=True)
    elif command == "columns":
        print(",".join(r[1] for r in conn.execute("PRAGMA table_info(notes)")), flush=True)
    elif command == "quit":
        break
"""


SQLITE_FILES = tuple(
    f".dopemux/{name}" for name in ("update", "service.db", "service.db-wal", "service.db-shm")
)


class Service:
    """A separate process holding a WAL database open, like ConPort would."""

    def __init__(self, db: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVICE, str(db)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.ask(None) == "ready"

    def ask(self, command: str | None) -> str:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        if command is not None:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        return self.process.stdout.readline().strip()

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("quit\n")
        self.process.stdin.close()
        self.process.wait(10)
        assert self.process.stdout is not None
        self.process.stdout.close()


@pytest.fixture
def service(installation: Path) -> Iterator[Service]:
    running = Service(installation / ".dopemux" / "service.db")
    yield running
    running.stop()


def rows(db: Path) -> int:
    with closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("SELECT count(*) FROM notes").fetchone()[0])


def state(root: Path) -> Path:
    return root / ".dopemux" / "update"


def test_a_wal_database_in_use_is_captured_with_its_uncheckpointed_pages(
    installation: Path, service: Service
) -> None:
    db = installation / ".dopemux" / "service.db"
    assert Path(f"{db}-wal").stat().st_size > 0  # the 200 rows are only in the WAL
    store = BackupStore(state(installation) / "backups")
    info = store.create(Scope.for_installation(installation, state_dir=state(installation)))
    stored = stored_copy(info.path, ".dopemux/service.db")
    assert rows(stored) == 200
    leftovers = sorted(p.name for p in stored.parent.iterdir())
    assert leftovers == [stored.name]  # no -wal, -shm or -journal beside the copy
    manifest = store.read_manifest(info.id)
    assert manifest.entries[".dopemux/service.db"].type == "sqlite"
    assert ".dopemux/service.db-wal" not in manifest.entries


async def test_a_failed_update_restores_a_database_a_service_holds_open(
    installation: Path, migrations: MigrationWriter, service: Service
) -> None:
    change = (
        "import sqlite3\n"
        "conn = sqlite3.connect(project_root / '.dopemux' / 'service.db', isolation_level=None)\n"
        "conn.executemany('INSERT INTO notes (body) VALUES (?)', [('new',)] * 50)\n"
        "conn.execute('ALTER TABLE notes ADD COLUMN priority INTEGER DEFAULT 3')\n"
        "conn.close()\n"
        "return True"
    )
    migrations.add("v1.0_to_v1.1", "1_change_db.py", forward=change, backward="return True")
    migrations.add("v1.0_to_v1.1", "2_fails.py", forward="return False")
    before = tree_digest(
        installation,
        exclude=(
            ".dopemux/update",
            ".dopemux/service.db-wal",
            ".dopemux/service.db-shm",
            ".dopemux/service.db",
        ),
    )
    result = await OrchestrationPhase(
        project_root=installation, migrations_dir=migrations.root, current_version="1.0"
    ).execute()
    assert not result.ok
    assert result.restored
    # The service's own, still open connection sees the database as it was.
    assert service.ask("count") == "200"
    assert service.ask("columns") == "id,body"
    assert (
        tree_digest(
            installation,
            exclude=(
                ".dopemux/update",
                ".dopemux/service.db-wal",
                ".dopemux/service.db-shm",
                ".dopemux/service.db",
            ),
        )
        == before
    )


async def test_a_deleted_database_comes_back_in_wal_mode_without_stale_sidecars(
    installation: Path, migrations: MigrationWriter
) -> None:
    db = installation / ".dopemux" / "service.db"
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        conn.execute("INSERT INTO notes (body) VALUES ('kept')")
    drop = (
        "db = project_root / '.dopemux' / 'service.db'\n"
        "db.unlink()\n"
        "(project_root / '.dopemux' / 'service.db-wal').write_bytes(b'stale wal of another db')\n"
        "db.write_text('not a database any more')\n"
        "return True"
    )
    migrations.add("v1.0_to_v1.1", "1_drop.py", forward=drop)
    migrations.add("v1.0_to_v1.1", "2_fails.py", forward="raise RuntimeError('late')")
    result = await OrchestrationPhase(
        project_root=installation, migrations_dir=migrations.root, current_version="1.0"
    ).execute()
    assert result.restored
    assert not Path(f"{db}-wal").exists()
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT body FROM notes").fetchall() == [("kept",)]
