"""`verify` copies the installation once: the snapshot it compares against is taken in the
copy's own pass, later snapshots read again only what changed, and culprit hunting copies
the live installation again, saying so when it changed meanwhile."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from conftest import MigrationWriter, tree_digest
from dopemux_update._authoring import _sandbox
from dopemux_update._authoring._sandbox import copy_sandbox, snapshot_sandbox
from dopemux_update._backup import _snapshot
from dopemux_update._backup._snapshot import take_snapshot
from dopemux_update._backup._tree import Scope
from dopemux_update.cli import main
from support.spy import spy
from support.tmpfs import mounted_tmpfs

V1 = "v0.1.0_to_v0.2.0"


def verify_json(root: Path, migrations: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    args = ["--root", str(root), "--migrations", str(migrations), "--from", "0.1.0", "--json"]
    code = main(["verify", *args])
    return code, json.loads(capsys.readouterr().out)


def add_database(root: Path) -> None:
    with closing(sqlite3.connect(root / ".dopemux" / "app.db")) as conn, conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO t (name) VALUES ('a'), ('b')")


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs, a sandbox folder that can really fill up; unmounted afterwards."""
    with mounted_tmpfs(tmp_path / "small-disk", "8m") as mount:
        yield mount


def test_verify_copies_each_file_of_the_installation_once(
    installation: Path,
    migrations: MigrationWriter,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    add_database(installation)
    migrations.add(
        V1,
        "001_adds.py",
        forward="(project_root / 'new.txt').write_text('new')\nreturn True",
        backward="(project_root / 'new.txt').unlink()\nreturn True",
    )
    migrations.add(V1, "002_nothing.py")
    copied: Counter[str] = Counter()
    real_copy, real_capture = _sandbox.copy_file, _sandbox.capture

    def copy_file(source: Path, destination: Path, **options: Any) -> None:
        if source.is_relative_to(installation):  # not a database kept aside in the sandbox
            copied[os.path.relpath(source, installation)] += 1
        real_copy(source, destination, **options)

    def capture(live: Path, copy: Path, **options: Any) -> None:
        copied[os.path.relpath(live, installation)] += 1
        real_capture(live, copy, **options)

    monkeypatch.setattr(_sandbox, "copy_file", copy_file)
    monkeypatch.setattr(_sandbox, "capture", capture)
    before = tree_digest(installation)
    code, payload = verify_json(installation, migrations.root, capsys)
    assert code == 0, payload
    files = {"config/app.yaml", "config/nested/deep.json", "secret.env", ".dopemux/data.txt"}
    assert copied == dict.fromkeys({*files, ".dopemux/app.db"}, 1)
    assert payload["notes"] == []
    assert tree_digest(installation) == before


def test_a_sandbox_folder_with_room_for_one_copy_is_enough(
    installation: Path, migrations: MigrationWriter, small_tmpfs: Path
) -> None:
    """Two copies of this 5 MiB installation do not fit in the 8 MiB sandbox folder."""
    (installation / "data.bin").write_bytes(os.urandom(5 << 20))
    migrations.add(
        V1,
        "001_rewrites.py",
        forward="(project_root / 'config' / 'app.yaml').write_text('x: 1\\n')\nreturn True",
        backward=(
            "(project_root / 'config' / 'app.yaml').write_text('# keep me\\nlog_level: info\\n')"
            "\nreturn True"
        ),
    )
    before = tree_digest(installation)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dopemux_update",
            "verify",
            "--root",
            str(installation),
            "--migrations",
            str(migrations.root),
            "--from",
            "0.1.0",
            "--sandbox-dir",
            str(small_tmpfs),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] is True
    assert list(small_tmpfs.iterdir()) == []
    assert tree_digest(installation) == before


def test_a_culprit_is_found_on_a_new_copy_and_a_change_to_the_installation_meanwhile_noted(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first migration stands in for a service writing to the live installation while
    verify runs; the second one's backward leaves a file behind."""
    live_log = installation / "service.log"
    migrations.add(
        V1,
        "001_service_writes.py",
        forward=f"with open({str(live_log)!r}, 'a') as log:\n    log.write('busy\\n')\nreturn True",
    )
    migrations.add(
        V1,
        "002_leaves.py",
        forward="(project_root / 'leftover.txt').write_text('made by forward')\nreturn True",
    )
    code, payload = verify_json(installation, migrations.root, capsys)
    assert code == 1
    assert payload["culprits"] == [f"{V1}/002_leaves"]
    [finding] = payload["findings"]
    assert (finding["stage"], finding["culprit"]) == ("compare", f"{V1}/002_leaves")
    assert finding["differences"]["added"] == ["leftover.txt"]
    [note] = payload["notes"]
    assert note.startswith("the installation changed while verify ran (1 difference(s)")
    args = ["--root", str(installation), "--migrations", str(migrations.root), "--from", "0.1.0"]
    main(["verify", *args])
    out = capsys.readouterr().out
    assert "Note: the installation changed while verify ran" in out


def test_a_backward_that_restores_size_and_mtime_but_not_the_bytes_is_found(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    """Later snapshots skip unchanged files by their standing; a rewrite that puts back the
    size and modification time is still a change (the kernel's change time moves)."""
    keep = "import os\np = project_root / 'secret.env'\nst = p.stat()\n"
    put_back = "os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))\nreturn True"
    migrations.add(
        V1,
        "001_same_size.py",
        forward=f"{keep}p.write_text('TOKEN=xyz\\n')\n{put_back}",
        backward=f"{keep}p.write_text('TOKEN=abd\\n')\n{put_back}",
    )
    code, payload = verify_json(installation, migrations.root, capsys)
    assert code == 1
    [changed] = payload["differences"]["changed"]
    assert changed["path"] == "secret.env"
    assert "-TOKEN=abc" in changed["diff"].splitlines()
    assert "+TOKEN=abd" in changed["diff"].splitlines()


def varied_tree(root: Path) -> None:
    add_database(root)
    (root / "binary.bin").write_bytes(b"\x00\x01" * 100)
    (root / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with (root / "sparse.bin").open("wb") as handle:
        handle.truncate(1 << 20)
        handle.write(b"head")
    os.mkfifo(root / "pipe")
    (root / "setgid").mkdir(mode=0o2750)
    (root / "setgid").chmod(0o2750)


def same_as_take_snapshot(sandbox: Path, tree: dict[str, Any]) -> None:
    expected = take_snapshot(Scope(sandbox), texts=True).items
    assert tree == expected
    assert {rel: item.text for rel, item in tree.items()} == {
        rel: item.text for rel, item in expected.items()
    }


def test_sandbox_snapshots_read_again_only_what_changed_and_read_as_take_snapshot_does(
    installation: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    varied_tree(installation)
    sandbox, clock = tmp_path / "sandbox", tmp_path / "clock"
    copied = copy_sandbox(Scope(installation), sandbox, clock)
    first = snapshot_sandbox(Scope(sandbox), clock, previous=copied)
    same_as_take_snapshot(sandbox, first.tree.items)
    read: list[str] = []

    def relative(path: Path) -> str:
        return os.path.relpath(path, sandbox)

    spy(monkeypatch, _sandbox, "_file_item", read, relative)
    digest = spy(monkeypatch, _sandbox, "database_digest", read, relative)
    monkeypatch.setattr(_snapshot, "database_digest", digest)
    second = snapshot_sandbox(Scope(sandbox), clock, previous=first)
    assert read == []
    assert second.tree.items == first.tree.items
    (sandbox / "config" / "app.yaml").write_text("# keep me\nlog_level: debug\n")
    (sandbox / "secret.env").chmod(0o644)
    held = sqlite3.connect(sandbox / ".dopemux" / "app.db")
    held.execute("PRAGMA journal_mode=WAL")
    with held:
        held.execute("INSERT INTO t (name) VALUES ('c')")
    # Not closed: the new row is only in the -wal file, the database file is as it was.
    third = snapshot_sandbox(Scope(sandbox), clock, previous=second)
    held.close()
    assert sorted(read) == [".dopemux/app.db", "config/app.yaml", "secret.env"]
    assert third.tree.items["secret.env"].mode == 0o644
    assert third.tree.items[".dopemux/app.db"] != second.tree.items[".dopemux/app.db"]
    same_as_take_snapshot(sandbox, third.tree.items)


def test_a_database_the_migrations_leave_alone_is_never_read_by_content(
    installation: Path,
    migrations: MigrationWriter,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Reading a database by content is the dearest part of a snapshot: it is kept aside
    unread, and read only when a migration changes it."""
    add_database(installation)
    migrations.add(
        V1,
        "001_config.py",
        forward="(project_root / 'config' / 'app.yaml').write_text('x: 1\\n')\nreturn True",
        backward=(
            "(project_root / 'config' / 'app.yaml').write_text('# keep me\\nlog_level: info\\n')"
            "\nreturn True"
        ),
    )
    read: list[Path] = []
    spy(monkeypatch, _sandbox, "database_digest", read)
    code, payload = verify_json(installation, migrations.root, capsys)
    assert code == 0, payload
    assert read == []
    migrations.add(
        V1,
        "002_row.py",
        forward=(
            "import sqlite3\nc = sqlite3.connect(project_root / '.dopemux' / 'app.db')\n"
            "c.execute(\"INSERT INTO t (name) VALUES ('c')\")\nc.commit()\nc.close()\nreturn True"
        ),
    )
    code, payload = verify_json(installation, migrations.root, capsys)
    assert code == 1
    assert [(c["table"], c["what"]) for c in payload["differences"]["databases"]] == [
        ("t", "1 row added (id=3)")
    ]
    assert len(read) >= 2  # the database as copied, and as the revert left it


def test_a_file_last_changed_in_the_clock_tick_of_the_mark_is_read_again(
    installation: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a coarse clock a write right after a snapshot can keep its change time; a file
    whose change time is not older than the snapshot's mark is never trusted unread."""
    sandbox, clock = tmp_path / "sandbox", tmp_path / "clock"
    first = snapshot_sandbox(
        Scope(sandbox), clock, previous=copy_sandbox(Scope(installation), sandbox, clock)
    )
    changed = first.standing["secret.env"][5]
    racy = dataclasses.replace(first, mark=changed)  # as if marked within the same tick
    read: list[str] = []
    spy(monkeypatch, _sandbox, "_file_item", read, lambda path: os.path.relpath(path, sandbox))
    snapshot_sandbox(Scope(sandbox), clock, previous=racy)
    assert "secret.env" in read
    read.clear()
    snapshot_sandbox(Scope(sandbox), clock, previous=first)
    assert read == []
