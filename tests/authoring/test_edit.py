"""dopemux_update.edit: atomic writes, YAML/JSON edits that keep what users wrote, SQLite DDL."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import stat
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML
from structlog.testing import capture_logs

from dopemux_update import EditError, UpdateError, edit
from dopemux_update._authoring import _edit_sqlite

BROKER = """\
# MCP broker configuration.
servers:
  serena:
    port: 3006
  context7:
    port: 3002
    timeout_seconds: 120  # raised from 30: our docs index is huge -- keep this!

# How often the broker pings each server.
health_check:
  interval_seconds: 30
"""


def stamp(path: Path) -> tuple[int, int]:
    """Inode and mtime: both change when a file is replaced."""
    info = path.stat()
    return info.st_ino, info.st_mtime_ns


def files_in(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


# --------------------------------------------------------------------------- atomic writes


def test_write_text_keeps_the_existing_files_mode(tmp_path: Path) -> None:
    target = tmp_path / "secret.yaml"
    target.write_text("old\n")
    target.chmod(0o600)
    edit.write_text(target, "new\n")
    assert target.read_text() == "new\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_a_new_file_gets_0644_minus_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        edit.write_bytes(tmp_path / "new.bin", b"\x00\x01")
    finally:
        os.umask(old)
    assert (tmp_path / "new.bin").read_bytes() == b"\x00\x01"
    assert stat.S_IMODE((tmp_path / "new.bin").stat().st_mode) == 0o640


def test_atomic_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    edit.write_text(tmp_path / "a.txt", "a")
    edit.write_bytes(tmp_path / "b.bin", b"b")
    with edit.atomic_write(tmp_path / "c.txt") as handle:
        handle.write("c")
    assert files_in(tmp_path) == ["a.txt", "b.bin", "c.txt"]


def test_text_is_written_as_given_without_newline_translation(tmp_path: Path) -> None:
    edit.write_text(tmp_path / "crlf.txt", "a\r\nb\n")
    assert (tmp_path / "crlf.txt").read_bytes() == b"a\r\nb\n"


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_a_failure_mid_write_leaves_the_original_intact_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    target = tmp_path / "config.yaml"
    target.write_text("original\n")

    def fail(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, fail)
    with pytest.raises(EditError, match="No space left") as caught:
        edit.write_text(target, "replacement\n")
    monkeypatch.undo()
    assert caught.value.path == target
    assert isinstance(caught.value.__cause__, OSError)
    assert target.read_text() == "original\n"
    assert files_in(tmp_path) == ["config.yaml"]


# Run in a child process: the file size limit applies to the whole process, and a write past
# it raises SIGXFSZ, which kills the process unless ignored (then the write fails with EFBIG).
FILE_SIZE_LIMIT_CHILD = """\
import json, os, resource, signal, sys
from pathlib import Path
from dopemux_update import EditError, edit

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
target, how, size = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
try:
    if how == "write_text":
        edit.write_text(target, "x" * size)
    elif how == "write_bytes":
        edit.write_bytes(target, b"x" * size)
    else:
        with edit.atomic_write(target) as handle:
            handle.write("x" * size)
except EditError as exc:
    raised = {
        "type": "EditError",
        "path": str(exc.path),
        "message": str(exc),
        "cause": type(exc.__cause__).__name__,
    }
except BaseException as exc:
    raised = {"type": type(exc).__name__, "message": str(exc)}
else:
    raised = {"type": None}
print(json.dumps(raised))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
@pytest.mark.parametrize(
    ("how", "size"),
    [
        ("write_text", 5_000),  # fits the buffer: fails when it is flushed
        ("write_bytes", 5_000),
        ("write_text", 100_000),  # larger than the buffer: fails in the write itself
        ("write_bytes", 100_000),
        ("atomic_write", 100_000),  # the caller's own write to the handle
    ],
)
def test_a_file_size_limit_is_an_edit_error_and_leaves_the_original(
    tmp_path: Path, how: str, size: int
) -> None:
    """EFBIG, on a write, the flush or the close, is an EditError naming the file, not OSError."""
    target = tmp_path / "config.yaml"
    target.write_text("original\n")
    done = subprocess.run(
        [sys.executable, "-c", FILE_SIZE_LIMIT_CHILD, str(target), how, str(size)],
        capture_output=True,
        text=True,
        check=True,
    )
    raised = json.loads(done.stdout)
    assert raised == {
        "type": "EditError",
        "path": str(target),
        "message": f"{target}: cannot write: File too large",
        "cause": "OSError",
    }
    assert target.read_text() == "original\n"
    assert files_in(tmp_path) == ["config.yaml"]


def test_an_os_error_inside_atomic_write_is_an_edit_error_and_changes_nothing(
    tmp_path: Path,
) -> None:
    target = tmp_path / "data.bin"
    target.write_bytes(b"original")
    failure = OSError(28, "No space left on device")

    def write_then_fail() -> None:
        with edit.atomic_write(target, "wb") as handle:
            handle.write(b"half-written")
            raise failure

    with pytest.raises(EditError, match="cannot write: No space left on device") as caught:
        write_then_fail()
    assert caught.value.path == target
    assert caught.value.__cause__ is failure
    assert target.read_bytes() == b"original"
    assert files_in(tmp_path) == ["data.bin"]


def test_an_exception_inside_atomic_write_propagates_and_changes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "data.bin"
    target.write_bytes(b"original")

    def write_then_fail() -> None:
        with edit.atomic_write(target, "wb") as handle:
            handle.write(b"half-written")
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        write_then_fail()
    assert target.read_bytes() == b"original"
    assert files_in(tmp_path) == ["data.bin"]


def test_writing_through_a_symlink_replaces_its_target_and_keeps_the_link(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    real = tmp_path / "shared" / "config.yaml"
    real.write_text("old\n")
    real.chmod(0o640)
    link = tmp_path / "config.yaml"
    link.symlink_to(real)
    edit.write_text(link, "new\n")
    assert link.is_symlink()
    assert real.read_text() == "new\n"
    assert stat.S_IMODE(real.stat().st_mode) == 0o640


def test_a_folder_in_the_way_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").mkdir()
    with pytest.raises(EditError, match="not a regular file"):
        edit.write_text(tmp_path / "config.yaml", "x")


# --------------------------------------------------------------------------- YAML


def test_a_naive_yaml_rewrite_loses_the_users_comment_but_edit_yaml_keeps_it(
    tmp_path: Path,
) -> None:
    """The issue's example: the same change, made without and with the helper."""
    naive, helped = tmp_path / "naive.yaml", tmp_path / "helped.yaml"
    naive.write_text(BROKER)
    helped.write_text(BROKER)

    # Without the helper: load, change the data, dump it again (what yaml.safe_load +
    # yaml.dump does). The comments are not data, so they are gone.
    data = json.loads(json.dumps(YAML(typ="safe").load(naive.read_text())))
    data["servers"]["leantime"] = {"port": 3007}
    out = io.StringIO()
    YAML(typ="safe").dump(data, out)
    naive.write_text(out.getvalue())
    assert "keep this!" not in naive.read_text()

    with edit.edit_yaml(helped) as doc:
        edit.set_in(doc, "servers.leantime.port", 3007)
    text = helped.read_text()
    assert "timeout_seconds: 120  # raised from 30: our docs index is huge -- keep this!" in text
    assert text.startswith("# MCP broker configuration.\nservers:\n  serena:\n")
    assert list(edit.load_yaml(helped)["servers"]) == ["serena", "context7", "leantime"]


def test_an_appended_entry_goes_above_the_comment_of_the_next_section(tmp_path: Path) -> None:
    path = tmp_path / "broker.yaml"
    path.write_text(BROKER)
    with edit.edit_yaml(path) as doc:
        edit.set_in(doc, ("servers", "leantime"), {"port": 3007}, comment="added by 0.2.0")
    assert path.read_text() == BROKER.replace(
        "keep this!\n",
        "keep this!\n  leantime:  # added by 0.2.0\n    port: 3007\n",
    )


def test_adding_then_deleting_an_entry_gives_back_the_file_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "broker.yaml"
    path.write_text(BROKER)
    with edit.edit_yaml(path) as doc:
        edit.set_in(doc, ("servers", "leantime"), {"port": 3007, "tags": ["a"]}, comment="ours")
        edit.set_in(doc, "health_check.retries", 3)
    with edit.edit_yaml(path) as doc:
        assert edit.get_comment(doc, "servers.leantime") == "ours"
        assert edit.get_comment(doc, "servers.serena") is None
        assert edit.delete_in(doc, "servers.leantime")
        assert edit.delete_in(doc, "health_check.retries")
    assert path.read_text() == BROKER


@pytest.mark.parametrize(
    ("before", "key", "after"),
    [
        # Parents that set_in created stay, empty: only the key itself is deleted.
        ("top:\n  a: 1\n", "top.b.c", "top:\n  a: 1\n  b: {}\n"),
        ("top:\n  a: 1\n", "new.deep.key", "top:\n  a: 1\nnew:\n  deep: {}\n"),
        # A key that held null becomes a mapping, and stays one.
        ("top:\n  a: 1\nempty:\nnext: 2\n", "empty.x", "top:\n  a: 1\nempty: {}\nnext: 2\n"),
    ],
)
def test_deleting_what_set_in_added_leaves_the_mappings_it_created(
    tmp_path: Path, before: str, key: str, after: str
) -> None:
    """Byte for byte only under an existing mapping (as migrations/README.md says)."""
    path = tmp_path / "c.yaml"
    path.write_text(before)
    with edit.edit_yaml(path) as doc:
        edit.set_in(doc, key, 5)
    with edit.edit_yaml(path) as doc:
        assert edit.delete_in(doc, key)
    assert path.read_text() == after


def test_deleting_a_middle_entry_keeps_the_comment_above_the_next_one(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("top:\n  a: 1\n  b: 2\n  # about c\n  c: 3\n")
    with edit.edit_yaml(path) as doc:
        assert edit.delete_in(doc, "top.b")
    assert path.read_text() == "top:\n  a: 1\n  # about c\n  c: 3\n"


def test_deleting_a_first_entry_keeps_the_comment_above_the_next_one(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("top:\n  a: 1\n  # about b\n  b: 2\n")
    with edit.edit_yaml(path) as doc:
        assert edit.delete_in(doc, "top.a")
    assert path.read_text() == "top:\n  # about b\n  b: 2\n"


def test_deleting_the_documents_first_key_keeps_the_comments_around_it(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("# header\na: 1\n# about b\nb: 2\n")
    with edit.edit_yaml(path) as doc:
        assert edit.delete_in(doc, "a")
    assert path.read_text() == "# header\n# about b\nb: 2\n"


def test_deleting_a_mappings_only_key_keeps_the_comment_after_it(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("top:\n  a: 1\n# about next\nnext: 2\n")
    with edit.edit_yaml(path) as doc:
        assert edit.delete_in(doc, "top.a")
    assert path.read_text() == "top: {}\n# about next\nnext: 2\n"
    with edit.edit_yaml(path) as doc:
        edit.set_in(doc, "top.a", 1)
    assert path.read_text() == "top:\n  a: 1\n# about next\nnext: 2\n"


def test_commenting_a_key_keeps_the_comment_lines_below_it(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("top:  # old\n  # first\n  a: 1  # eol\n  # about b\n  b: 2\n")
    with edit.edit_yaml(path) as doc:
        edit.set_in(doc, "top", doc["top"], comment="new")
        edit.set_in(doc, "top.a", 5, comment="five")
        assert edit.get_comment(doc, "top") == "new"
    assert path.read_text() == "top:  # new\n  # first\n  a: 5  # five\n  # about b\n  b: 2\n"


def test_a_comment_needs_a_yaml_document_and_nothing_is_set_without_one() -> None:
    doc: dict[str, object] = {}
    with pytest.raises(EditError, match="not a YAML round-trip document"):
        edit.set_in(doc, "a", 1, comment="x")
    assert doc == {}


def test_edit_yaml_does_not_rewrite_an_unchanged_file(tmp_path: Path) -> None:
    path = tmp_path / "broker.yaml"
    path.write_text(BROKER)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    before = stamp(path)
    with edit.edit_yaml(path) as doc:
        assert edit.get_in(doc, "servers.serena.port") == 3006
        edit.set_in(doc, "servers.serena.port", 3006)  # same value: no change
    assert stamp(path) == before


def test_an_exception_inside_edit_yaml_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "broker.yaml"
    path.write_text(BROKER)

    def change_then_fail() -> None:
        with edit.edit_yaml(path) as doc:
            edit.set_in(doc, "servers.leantime.port", 3007)
            raise RuntimeError("changed my mind")

    with pytest.raises(RuntimeError, match="changed my mind"):
        change_then_fail()
    assert path.read_text() == BROKER
    assert files_in(tmp_path) == ["broker.yaml"]


def test_edit_yaml_keeps_four_space_indentation_crlf_and_quotes(tmp_path: Path) -> None:
    path = tmp_path / "compose.yml"
    original = "services:\r\n    web:\r\n        ports:\r\n        -   '80:80'\r\n"
    path.write_bytes(original.encode())
    with edit.edit_yaml(path) as doc:
        edit.set_in(doc, "services.db.ports", [edit.quoted("5432:5432")])
    assert (
        path.read_bytes()
        == (original + '    db:\r\n        ports:\r\n        -   "5432:5432"\r\n').encode()
    )


def test_edit_yaml_defaults_to_two_spaces_with_indented_sequences(tmp_path: Path) -> None:
    path = tmp_path / "flat.yaml"
    path.write_text("name: dopemux\n")
    with edit.edit_yaml(path) as doc:
        edit.set_in(doc, "services.web.ports", ["80:80"])
    assert path.read_text() == "name: dopemux\nservices:\n  web:\n    ports:\n      - 80:80\n"


def test_an_empty_key_becomes_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("servers:\nother: 1\n")
    with edit.edit_yaml(path) as doc:
        edit.set_in(doc, "servers.leantime.port", 3007)
    assert path.read_text() == "servers:\n  leantime:\n    port: 3007\nother: 1\n"


def test_invalid_yaml_raises_edit_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("servers: [unclosed\n")
    with pytest.raises(EditError, match="not valid YAML") as caught:
        edit.load_yaml(path)
    assert caught.value.path == path
    assert isinstance(caught.value, UpdateError)


def test_a_missing_yaml_file_raises_edit_error(tmp_path: Path) -> None:
    with pytest.raises(EditError, match="cannot read"):
        edit.load_yaml(tmp_path / "absent.yaml")


def test_without_ruamel_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "broker.yaml"
    path.write_text(BROKER)
    monkeypatch.setitem(sys.modules, "ruamel.yaml", None)
    with pytest.raises(EditError, match=r"pip install 'ruamel\.yaml>=0\.18'") as caught:
        edit.load_yaml(path)
    assert isinstance(caught.value.__cause__, ImportError)
    assert path.read_text() == BROKER


# --------------------------------------------------------------------------- key paths


def test_set_in_creates_intermediate_maps_and_get_in_reads_them() -> None:
    doc: dict[str, object] = {"a": {"x": 1}}
    edit.set_in(doc, "a.b.c", 2)
    edit.set_in(doc, ["dotted.key", 0], "ok")
    assert doc == {"a": {"x": 1, "b": {"c": 2}}, "dotted.key": {0: "ok"}}
    assert edit.get_in(doc, "a.b.c") == 2
    assert edit.get_in(doc, "a.missing.c", "default") == "default"
    assert edit.get_in({"l": [10, 20]}, ("l", 1)) == 20


def test_set_in_refuses_to_go_through_a_non_mapping() -> None:
    with pytest.raises(EditError, match=r"cannot set a\.b\.c: a holds list, not a mapping"):
        edit.set_in({"a": [1]}, "a.b.c", 2)


def test_delete_in_reports_whether_it_removed_something() -> None:
    doc = {"a": {"b": 1, "c": 2}}
    assert edit.delete_in(doc, "a.b")
    assert not edit.delete_in(doc, "a.b")
    assert not edit.delete_in(doc, "x.y")
    assert doc == {"a": {"c": 2}}


# --------------------------------------------------------------------------- JSON


def test_edit_json_keeps_indent_key_order_and_a_missing_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_text('{\n    "zeta": 1,\n    "alpha": {\n        "on": true\n    }\n}')
    with edit.edit_json(path) as doc:
        doc["alpha"]["level"] = 2
    assert path.read_text() == (
        '{\n    "zeta": 1,\n    "alpha": {\n        "on": true,\n        "level": 2\n    }\n}'
    )


def test_edit_json_keeps_tabs_and_a_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "tabs.json"
    path.write_text('{\n\t"a": "café"\n}\n')
    with edit.edit_json(path) as doc:
        doc["b"] = [1]
    assert path.read_text() == '{\n\t"a": "café",\n\t"b": [\n\t\t1\n\t]\n}\n'


def test_edit_json_keeps_a_one_line_file_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "one.json"
    path.write_text('{"a": 1}\n')
    with edit.edit_json(path) as doc:
        doc["b"] = 2
    assert path.read_text() == '{"a": 1, "b": 2}\n'


def test_edit_json_does_not_rewrite_an_unchanged_file(tmp_path: Path) -> None:
    path = tmp_path / "same.json"
    path.write_text('{"flag": 1}')
    before = stamp(path)
    with edit.edit_json(path) as doc:
        doc["flag"] = 1
    assert stamp(path) == before


def test_changing_1_to_true_is_a_change(tmp_path: Path) -> None:
    """1 == True in Python, but not in the file."""
    path = tmp_path / "flag.json"
    path.write_text('{"flag": 1}')
    with edit.edit_json(path) as doc:
        doc["flag"] = True
    assert path.read_text() == '{"flag": true}'


def test_an_exception_inside_edit_json_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text('{"a": 1}\n')

    def change_then_fail() -> None:
        with edit.edit_json(path) as doc:
            doc["b"] = 2
            _ = doc["missing"]

    with pytest.raises(KeyError):
        change_then_fail()
    assert path.read_text() == '{"a": 1}\n'


def test_invalid_json_raises_edit_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{nope")
    with pytest.raises(EditError, match="not valid JSON") as caught, edit.edit_json(path):
        pass
    assert caught.value.path == path


# --------------------------------------------------------------------------- SQLite

ROWS = [(1, "first", "2024-01-01"), (2, "second", "2024-01-02")]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "conport.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.execute(
            "CREATE TABLE decisions (\n  id INTEGER PRIMARY KEY AUTOINCREMENT,\n"
            "  summary TEXT NOT NULL,\n  created_at TEXT\n)"
        )
        conn.execute("CREATE INDEX idx_created ON decisions (created_at)")
        conn.execute(
            "CREATE TRIGGER no_empty BEFORE INSERT ON decisions WHEN NEW.summary = ''"
            " BEGIN SELECT RAISE(ABORT, 'empty'); END"
        )
        conn.executemany("INSERT INTO decisions VALUES (?, ?, ?)", ROWS)
        conn.execute("DELETE FROM decisions WHERE id = 2")  # the AUTOINCREMENT counter stays at 2
        conn.execute("INSERT INTO decisions VALUES (2, 'second', '2024-01-02')")
        conn.commit()
    return path


def schema(path: Path) -> list[tuple[str, str]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name"
        ).fetchall()


def rows(path: Path, columns: str = "id, summary, created_at") -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(f"SELECT {columns} FROM decisions ORDER BY id").fetchall()  # noqa: S608


def sequence(path: Path) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT name, seq FROM sqlite_sequence").fetchall()


def test_add_column_adds_once_and_keeps_the_rows(db: Path) -> None:
    assert edit.add_column(db, "decisions", "priority", "INTEGER NOT NULL DEFAULT 3")
    assert not edit.add_column(db, "Decisions", "PRIORITY", "INTEGER NOT NULL DEFAULT 3")
    assert edit.column_exists(db, "decisions", "priority")
    assert rows(db, "id, summary, priority") == [(1, "first", 3), (2, "second", 3)]


def test_drop_column_drops_once_and_gives_back_the_original_schema(db: Path) -> None:
    before = schema(db)
    edit.add_column(db, "decisions", "priority", "INTEGER NOT NULL DEFAULT 3")
    assert edit.drop_column(db, "decisions", "priority")
    assert not edit.drop_column(db, "decisions", "priority")
    assert not edit.column_exists(db, "decisions", "priority")
    assert schema(db) == before
    assert rows(db) == ROWS


def test_drop_column_rebuilds_the_table_on_sqlite_before_3_35(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before, before_sequence = schema(db), sequence(db)
    edit.add_column(db, "decisions", "priority", "INTEGER NOT NULL DEFAULT 3")
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 34, 1))
    with pytest.raises(EditError, match="has no ALTER TABLE DROP COLUMN"):
        edit.drop_column(db, "decisions", "priority")
    assert edit.drop_column(db, "decisions", "priority", decl="INTEGER NOT NULL DEFAULT 3")
    assert schema(db) == before  # same CREATE TABLE text, index and trigger
    assert rows(db) == ROWS
    assert sequence(db) == before_sequence


def test_the_rebuild_also_runs_inside_a_callers_transaction(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = schema(db)
    edit.add_column(db, "decisions", "priority", "INTEGER NOT NULL DEFAULT 3")
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 34, 1))
    with edit.sqlite_transaction(db) as conn:
        assert edit.drop_column(conn, "decisions", "priority", decl="INTEGER NOT NULL DEFAULT 3")
        assert conn.execute("PRAGMA legacy_alter_table").fetchone() == (0,)
    assert schema(db) == before
    assert rows(db) == ROWS


def test_the_rebuild_refuses_a_declaration_it_cannot_find(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    edit.add_column(db, "decisions", "priority", "INTEGER NOT NULL DEFAULT 3")
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 34, 1))
    with pytest.raises(EditError, match="exactly once"):
        edit.drop_column(db, "decisions", "priority", decl="INTEGER DEFAULT 3")
    assert edit.column_exists(db, "decisions", "priority")


def test_a_refused_declaration_raises_and_changes_nothing(db: Path) -> None:
    before = schema(db)
    with pytest.raises(EditError, match="ADD COLUMN") as caught:
        edit.add_column(db, "decisions", "priority", "INTEGER NOT NULL")  # no default: refused
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    assert schema(db) == before


def test_a_failure_rolls_back_every_change_of_the_transaction(db: Path) -> None:
    before = schema(db)

    def two_changes_the_second_refused() -> None:
        with edit.sqlite_transaction(db) as conn:
            assert edit.add_column(conn, "decisions", "priority", "INTEGER DEFAULT 3")
            edit.add_column(conn, "decisions", "broken", "INTEGER NOT NULL")

    with pytest.raises(EditError, match="broken"):
        two_changes_the_second_refused()
    assert schema(db) == before
    assert not edit.column_exists(db, "decisions", "priority")


def test_dropping_an_indexed_column_is_refused_and_changes_nothing(db: Path) -> None:
    before = schema(db)
    with pytest.raises(EditError, match="DROP COLUMN"):
        edit.drop_column(db, "decisions", "created_at")
    assert schema(db) == before


@pytest.mark.parametrize(
    "call",
    [
        lambda db: edit.add_column(db, "missing_table", "c", "TEXT"),
        lambda db: edit.drop_column(db, "missing_table", "c"),
        lambda db: edit.column_exists(db, "missing_table", "c"),
    ],
)
def test_a_missing_table_is_an_error_naming_the_database_and_table(db: Path, call: object) -> None:
    assert callable(call)
    with pytest.raises(EditError, match="missing_table") as caught:
        call(db)
    assert caught.value.path == db
    assert str(db) in str(caught.value)
    assert not edit.table_exists(db, "missing_table")
    assert edit.table_exists(db, "DECISIONS")


@pytest.mark.parametrize(
    "call",
    [
        lambda db: edit.table_exists(db, "decisions"),
        lambda db: edit.column_exists(db, "decisions", "summary"),
        lambda db: edit.add_column(db, "decisions", "c", "TEXT"),
        lambda db: edit.drop_column(db, "decisions", "summary"),
    ],
)
def test_a_file_that_is_not_a_database_is_an_edit_error_naming_it(
    tmp_path: Path, call: object
) -> None:
    """Reading as well as writing: an SQLite error is an EditError, not sqlite3.DatabaseError."""
    assert callable(call)
    path = tmp_path / "notes.db"
    path.write_text("not a database\n" * 300)
    with pytest.raises(EditError, match="file is not a database") as caught:
        call(path)
    assert caught.value.path == path
    assert str(path) in str(caught.value)
    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)
    assert path.read_text() == "not a database\n" * 300


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda db: edit.table_exists(db, "decisions"), "table 'decisions'"),
        (lambda db: edit.column_exists(db, "decisions", "summary"), "column 'summary'"),
    ],
)
def test_a_failed_read_names_the_database_and_what_was_looked_for(
    tmp_path: Path, call: object, named: str
) -> None:
    assert callable(call)
    path = tmp_path / "notes.db"
    path.write_text("not a database\n" * 300)
    with pytest.raises(EditError, match=named):
        call(path)


class FailingRollback(sqlite3.Connection):
    """A connection whose ROLLBACK fails, as it may on a busy or broken database."""

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "ROLLBACK":
            raise sqlite3.OperationalError("cannot rollback: disk I/O error")
        return super().execute(sql, *args)


def test_a_failed_rollback_does_not_replace_the_error_that_caused_it(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The original error propagates, the rollback's is logged, and closing undoes the rest."""
    before = schema(db)

    def connect(path: Path) -> sqlite3.Connection:
        return sqlite3.connect(path, isolation_level=None, factory=FailingRollback)

    monkeypatch.setattr(_edit_sqlite, "_connect", connect)

    def change_then_fail() -> None:
        with edit.sqlite_transaction(db) as conn:
            edit.add_column(conn, "decisions", "priority", "INTEGER DEFAULT 3")
            raise ZeroDivisionError

    with capture_logs() as logs, pytest.raises(ZeroDivisionError):
        change_then_fail()
    assert [log["event"] for log in logs] == ["sqlite.rollback_failed"]
    assert logs[0]["path"] == str(db)
    assert "disk I/O error" in logs[0]["error"]
    monkeypatch.undo()
    assert schema(db) == before
    assert rows(db) == ROWS


def test_a_missing_database_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    with pytest.raises(EditError, match="no such database file"):
        edit.add_column(tmp_path / "absent.db", "t", "c", "TEXT")
    assert files_in(tmp_path) == []


def test_identifiers_with_quotes_and_spaces_are_quoted(tmp_path: Path) -> None:
    path = tmp_path / "odd.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.execute('CREATE TABLE "we""ird table" (id INTEGER)')
    assert edit.add_column(path, 'we"ird table', 'a "b" c', "TEXT")
    assert edit.column_exists(path, 'we"ird table', 'a "b" c')
    assert edit.drop_column(path, 'we"ird table', 'a "b" c')


def test_a_reader_of_a_wal_database_does_not_block_a_change(db: Path) -> None:
    with closing(sqlite3.connect(db, isolation_level=None)) as service:
        service.execute("PRAGMA journal_mode=WAL").fetchall()
        service.execute("BEGIN")
        assert service.execute("SELECT count(*) FROM decisions").fetchone() == (2,)
        assert edit.add_column(db, "decisions", "priority", "INTEGER DEFAULT 3")
        service.execute("COMMIT")


def test_a_writer_holding_the_lock_too_long_is_an_edit_error(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_edit_sqlite, "BUSY_TIMEOUT_SECONDS", 0.05)
    with closing(sqlite3.connect(db, isolation_level=None)) as service:
        service.execute("BEGIN IMMEDIATE")
        with pytest.raises(EditError, match="locked"):
            edit.add_column(db, "decisions", "priority", "INTEGER DEFAULT 3")
        service.execute("ROLLBACK")
    assert not edit.column_exists(db, "decisions", "priority")
