"""A hostile world at the edges: a permissive umask, other users, damaged files, odd migrations,
and floods of output. Each test builds the situation for real and runs the command line as a
subprocess where the process matters (umask, user, exit code)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import MigrationWriter, tree_digest
from dopemux_update import BackupStore
from dopemux_update._run._capture import capture_thread, routing_installed
from dopemux_update.cli import main
from dopemux_update.cli._common import RunLog

UNPRIVILEGED = 65534


def cli(
    *args: str, umask: int | None = None, user: int | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``dopemux-update ARGS`` in a subprocess, optionally under ``umask`` or as ``user``."""
    command = [sys.executable, "-m", "dopemux_update", *args]
    if user is not None:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    if umask is not None:
        command = ["sh", "-c", f'umask {umask:03o}; exec "$@"', "sh", *command]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        command, capture_output=True, text=True, check=False, env=env, cwd=cwd, timeout=120
    )


def json_of(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def common(root: Path, migrations: MigrationWriter) -> list[str]:
    return ["--root", str(root), "--migrations", str(migrations.root)]


# -- 7. the state folder is private ---------------------------------------------------------


def test_a_state_folder_readable_by_others_is_made_private_by_the_next_writing_command(
    installation: Path, migrations: MigrationWriter
) -> None:
    """A checkout or a copy (the sample ships one) leaves .dopemux/update 0755."""
    state = installation / ".dopemux" / "update"
    state.mkdir(parents=True)
    state.chmod(0o755)
    migrations.add("v1.0_to_v1.1", "1_a.py")
    assert cli("stamp", "1.0", *common(installation, migrations)).returncode == 0
    assert mode_of(state) == 0o700
    assert mode_of(state / "state.json") == 0o600


def test_under_umask_000_the_state_folder_and_its_files_are_private(
    tmp_path: Path, migrations: MigrationWriter
) -> None:
    root = tmp_path / "fresh"
    root.mkdir()
    (root / "config.yaml").write_text("a: 1\n")
    migrations.add("v1.0_to_v1.1", "1_a.py", forward="print('hi')\nreturn True")
    assert cli("stamp", "1.0", *common(root, migrations), umask=0).returncode == 0
    done = cli("upgrade", "--json", *common(root, migrations), umask=0)
    assert done.returncode == 0, done.stderr
    assert cli("backups", "create", *common(root, migrations), umask=0).returncode == 0
    state = root / ".dopemux" / "update"
    folders = [root / ".dopemux", *(p for p in state.rglob("*") if p.is_dir()), state]
    files = [p for p in state.rglob("*") if p.is_file()]
    objects = state / "backups" / "objects"  # immutable: read-only for the owner alone
    assert {str(p.relative_to(root)): oct(mode_of(p)) for p in folders} == {
        str(p.relative_to(root)): "0o700" for p in folders
    }
    assert {str(p.relative_to(root)): oct(mode_of(p)) for p in files} == {
        str(p.relative_to(root)): "0o400" if p.is_relative_to(objects) else "0o600" for p in files
    }
    names = {p.name for p in files}
    assert {"lock", "state.json", "manifest.json"} <= names
    assert any(p.suffix == ".jsonl" for p in files)  # the run logs


@pytest.mark.parametrize("command", ["upgrade", "recover", "status", "stamp"])
def test_a_state_folder_writable_by_others_is_refused_and_nothing_changes(
    installation: Path, migrations: MigrationWriter, command: str
) -> None:
    migrations.add("v1.0_to_v1.1", "1_a.py", forward="(project_root / 'new').write_text('x')")
    assert main(["stamp", "1.0", *common(installation, migrations)]) == 0
    state = installation / ".dopemux" / "update"
    # What another local user could do to a world-writable state folder: plant a journal.
    state.chmod(0o777)
    (state / "journal.jsonl").write_text('{"kind": "run_started"}\n')
    before = tree_digest(installation, exclude=())
    args = {"stamp": ["stamp", "1.1"], "upgrade": ["upgrade", "--no-restart"]}.get(
        command, [command]
    )
    done = cli(*args, "--json", *common(installation, migrations))
    assert done.returncode == 2, done.stderr
    assert str(state) in done.stderr
    assert "writable by other users" in done.stderr
    assert "chmod 700" in done.stderr
    assert "Traceback" not in done.stderr
    assert json_of(done)["ok"] is False
    assert tree_digest(installation, exclude=()) == before


def test_a_state_folder_owned_by_another_user_is_refused(
    installation: Path, migrations: MigrationWriter
) -> None:
    migrations.add("v1.0_to_v1.1", "1_a.py")
    assert main(["stamp", "1.0", *common(installation, migrations)]) == 0
    state = installation / ".dopemux" / "update"
    os.chown(state, UNPRIVILEGED, UNPRIVILEGED)
    before = tree_digest(installation, exclude=())
    done = cli("upgrade", "--no-restart", *common(installation, migrations))
    assert done.returncode == 2, done.stderr
    assert str(state) in done.stderr
    assert f"belongs to uid {UNPRIVILEGED}" in done.stderr
    assert tree_digest(installation, exclude=()) == before


@pytest.mark.parametrize("name", ["state.json", "lock", "journal.jsonl"])
def test_a_state_file_writable_by_others_is_refused(
    installation: Path, migrations: MigrationWriter, name: str
) -> None:
    migrations.add("v1.0_to_v1.1", "1_a.py")
    assert main(["stamp", "1.0", *common(installation, migrations)]) == 0
    planted = installation / ".dopemux" / "update" / name
    if not planted.exists():
        planted.write_text('{"kind": "run_started"}\n')
    planted.chmod(0o666)
    done = cli("recover", *common(installation, migrations))
    assert done.returncode == 2, done.stderr
    assert str(planted) in done.stderr
    assert "writable by other users" in done.stderr


def test_a_dopemux_folder_writable_by_all_users_is_refused(
    installation: Path, migrations: MigrationWriter
) -> None:
    migrations.add("v1.0_to_v1.1", "1_a.py")
    assert main(["stamp", "1.0", *common(installation, migrations)]) == 0
    (installation / ".dopemux").chmod(0o775)  # shared with a group (umask 002): let be
    assert cli("status", *common(installation, migrations)).returncode == 0
    (installation / ".dopemux").chmod(0o777)
    done = cli("status", *common(installation, migrations))
    assert done.returncode == 2, done.stderr
    assert str(installation / ".dopemux") in done.stderr
    assert "writable by other users" in done.stderr


@pytest.fixture
def reachable(tmp_path: Path) -> Iterator[Path]:
    """A folder another user can reach: pytest's own are private to root."""
    folder = Path(tempfile.mkdtemp(prefix="dopemux-hostile-", dir="/tmp"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def as_unprivileged(*args: str, umask: int | None = None) -> subprocess.CompletedProcess[str]:
    probe = cli("--version", user=UNPRIVILEGED)
    if probe.returncode != 0:
        pytest.skip(f"cannot run the command line as uid {UNPRIVILEGED}: {probe.stderr.strip()}")
    return cli(*args, user=UNPRIVILEGED, umask=umask)


def test_an_unprivileged_owner_creates_and_uses_its_private_state_folder(
    reachable: Path,
) -> None:
    root = reachable / "install"
    (root / "migrations").mkdir(parents=True)
    os.chown(root, UNPRIVILEGED, UNPRIVILEGED)
    done = as_unprivileged("stamp", "1.0", "--root", str(root), umask=0)
    assert done.returncode == 0, done.stderr
    state = root / ".dopemux" / "update"
    assert state.stat().st_uid == UNPRIVILEGED
    assert (mode_of(root / ".dopemux"), mode_of(state)) == (0o700, 0o700)
    assert mode_of(state / "state.json") == 0o600
    assert as_unprivileged("status", "--root", str(root)).returncode == 0


def test_a_state_folder_of_root_is_refused_to_another_user(reachable: Path) -> None:
    root = reachable / "install"
    (root / "migrations").mkdir(parents=True)
    (root / ".dopemux" / "update").mkdir(parents=True)
    (root / ".dopemux").chmod(0o755)
    (root / ".dopemux" / "update").chmod(0o755)
    done = as_unprivileged("status", "--root", str(root))
    assert done.returncode == 2, done.stderr
    assert "belongs to uid 0" in done.stderr


def test_the_library_refuses_an_unsafe_state_folder_under_its_lock(tmp_path: Path) -> None:
    from dopemux_update import UnsafeStateError
    from dopemux_update._safety._lock import holding_lock

    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o770)
    with pytest.raises(UnsafeStateError, match="writable by other users"), holding_lock(state):
        pass
    assert not (state / "lock").exists()


# -- 10. floods of output -------------------------------------------------------------------


def captured(*writes: str) -> list[tuple[str, str]]:
    lines: list[tuple[str, str]] = []
    with routing_installed(), capture_thread(lambda stream, line: lines.append((stream, line))):
        for text in writes:
            sys.stdout.write(text)
    return lines


def test_carriage_returns_end_lines_as_a_terminal_would_show_them() -> None:
    assert captured("\r 10%", "\r 20%\r", "\n", "done\r\n", "a\r", "b\n", "\n", "tail") == [
        ("stdout", " 10%"),
        ("stdout", " 20%"),
        ("stdout", "done"),
        ("stdout", "a"),
        ("stdout", "b"),
        ("stdout", ""),
        ("stdout", "tail"),
    ]


def test_forty_thousand_progress_updates_are_captured_in_linear_time() -> None:
    """A progress bar redrawn with ``\\r`` and no newline took 10.8 s (quadratic).

    Linear means four times the updates cost about four times the time (quadratic: sixteen);
    CPU time of this process, so that other work on the machine does not count."""

    def cost(count: int) -> float:
        updates = [f"\rcopying {i:>6}/{count} [{'#' * (i // 1000):<40}]" for i in range(count)]
        started = time.process_time()
        lines = captured(*updates, "\n")
        took = time.process_time() - started
        assert len(lines) == count
        assert lines[-1][1].startswith(f"copying {count - 1:>6}/{count}")
        return took

    small = min(cost(10_000) for _ in range(3))
    large = min(cost(40_000) for _ in range(3))
    assert large < 8 * small, f"{small:.3f}s for 10,000, {large:.3f}s for 40,000"
    assert large < 2.0, f"{large:.2f}s"


def test_one_endless_line_is_handed_on_in_bounded_pieces() -> None:
    chunk = "x" * 4096
    lines = captured(*([chunk] * 1024), "end" * 700_000 + "\n")  # 6 MiB without a newline
    assert "".join(line for _, line in lines) == chunk * 1024 + "end" * 700_000
    assert max(len(line) for _, line in lines) <= 1 << 20


def peak_rss_of(*args: str) -> tuple[int, str, int]:
    """Run the command line; its exit code, stdout and peak resident memory in bytes."""
    with tempfile.TemporaryFile("w+") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "dopemux_update", *args],
            stdout=out,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        return process.returncode, out.read(), usage.ru_maxrss * 1024


def test_a_flood_of_output_keeps_memory_bounded_and_the_log_keeps_it_all(
    installation: Path, migrations: MigrationWriter
) -> None:
    """20 MB printed (100 MB cost 1.4 GB): the JSON keeps the last lines, the log all."""
    flood = "for i in range(COUNT):\n    print(f'{i:07d} ' + 'y' * 992)\nreturn True"
    migrations.add("v1.0_to_v1.1", "1_quiet.py", forward=flood.replace("COUNT", "10"))
    migrations.add("v1.1_to_v1.2", "1_loud.py", forward=flood.replace("COUNT", "20_000"))
    migrations.add("v1.1_to_v1.2", "2_long.py", forward="print('z' * 100_000)\nreturn True")
    args = common(installation, migrations)
    assert main(["stamp", "1.0", *args]) == 0
    code, _, small = peak_rss_of("upgrade", "--to", "1.1", "--json", *args)
    assert code == 0
    code, out, big = peak_rss_of("upgrade", "--json", *args)
    assert code == 0
    assert big - small < 12 * 2**20, f"{(big - small) / 2**20:.0f} MiB more for 20 MB printed"
    result = json.loads(out)
    loud = [e for e in result["output"] if e["id"] == "v1.1_to_v1.2/1_loud"]
    assert loud[0] == {
        "id": "v1.1_to_v1.2/1_loud",
        "stream": "omitted",
        "line": "… 19,800 earlier lines not shown (see the run log)",
    }
    assert [e["line"][:7] for e in loud[1:]] == [f"{i:07d}" for i in range(19_800, 20_000)]
    (long,) = [e["line"] for e in result["output"] if e["id"] == "v1.1_to_v1.2/2_long"]
    assert long == "z" * 4_000 + "… (96,000 more characters in the run log)"
    logged = [
        json.loads(line)
        for line in Path(result["log"]).read_text().splitlines()
        if '"migration.output"' in line
    ]
    assert len(logged) == 20_001
    assert logged[-1]["line"] == "z" * 100_000


def test_a_run_log_not_started_yet_holds_little_in_memory_and_loses_nothing(
    tmp_path: Path,
) -> None:
    run_log = RunLog(tmp_path / "state" / "logs" / "run.jsonl")
    line = "w" * 1_000
    tracemalloc.start()
    try:
        for number in range(20_000):  # 20 MB of events before the command is validated
            run_log(None, "info", {"event": "migration.import_output", "n": number, "line": line})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"{peak / 2**20:.0f} MiB held"
    run_log.start()
    run_log(None, "info", {"event": "after"})
    run_log.close()
    events = [json.loads(text) for text in run_log.path.read_text().splitlines()]
    assert [e.get("n") for e in events] == [*range(20_000), None]
    assert mode_of(run_log.path) == 0o600


# -- 8. clear errors, right exit codes ------------------------------------------------------

EXITING_REPR = (
    "class Sly:\n    def __repr__(self):\n        raise SystemExit(0)\n    __str__ = __repr__\n"
)


def test_sys_exit_at_a_migrations_import_is_a_validation_error_naming_the_file(
    installation: Path, migrations: MigrationWriter
) -> None:
    bad = migrations.add("v1.0_to_v1.1", "1_a.py")
    bad.write_text("import sys\nsys.exit(0)\n" + bad.read_text())
    before = tree_digest(installation, exclude=())
    done = cli("upgrade", "--from", "1.0", "--json", *common(installation, migrations))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert f"{bad}: import failed: called sys.exit(0)" in done.stderr
    assert "Nothing was changed" in done.stderr
    assert json_of(done)["ok"] is False
    assert tree_digest(installation, exclude=()) == before


def test_migration_info_whose_repr_exits_is_a_validation_error(
    installation: Path, migrations: MigrationWriter
) -> None:
    bad = migrations.add("v1.0_to_v1.1", "1_a.py")
    source = bad.read_text().replace(
        "MIGRATION_INFO = {", "MIGRATION_INFO = {'breaking_changes': Sly(), "
    )
    bad.write_text(
        EXITING_REPR + source.replace("'breaking_changes': False", "'requires_restart': []")
    )
    before = tree_digest(installation, exclude=())
    done = cli("plan", "--from", "1.0", *common(installation, migrations))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert str(bad) in done.stderr
    assert tree_digest(installation, exclude=()) == before


@pytest.mark.parametrize(
    ("forward", "error"),
    [
        ("return Sly()", "returned <Sly object> (Sly), not a bool"),
        ("raise SystemExit(3)", "raised SystemExit: 3"),
        ("class Odd(Exception):\n    __str__ = Sly.__repr__\nraise Odd()", "raised Odd: <Odd"),
    ],
)
def test_a_migration_that_exits_or_whose_result_exits_when_shown_fails_and_is_rolled_back(
    installation: Path, migrations: MigrationWriter, forward: str, error: str
) -> None:
    migrations.add(
        "v1.0_to_v1.1", "1_a.py", forward="(project_root / 'made').write_text('x')\nreturn True"
    )
    bad = migrations.add("v1.0_to_v1.1", "2_b.py", forward=forward)
    bad.write_text(EXITING_REPR + bad.read_text())
    before = tree_digest(installation)
    done = cli("upgrade", "--from", "1.0", "--json", *common(installation, migrations))
    assert done.returncode == 1, (done.stdout, done.stderr)
    result = json_of(done)
    assert result["failed_migration"] == "v1.0_to_v1.1/2_b"
    assert error in result["error"]
    assert result["rolled_back"] == ["v1.0_to_v1.1/1_a"]
    assert tree_digest(installation) == before


def test_one_damaged_manifest_is_shown_as_damaged_and_the_other_backups_are_listed(
    installation: Path, migrations: MigrationWriter
) -> None:
    migrations.add("v1.0_to_v1.1", "1_a.py")
    args = common(installation, migrations)
    assert main(["stamp", "1.0", *args]) == 0
    assert [main(["backups", "create", *args]) for _ in range(3)] == [0, 0, 0]
    ids = BackupStore(installation / ".dopemux" / "update" / "backups").ids()
    assert len(ids) == 3
    manifest = installation / ".dopemux" / "update" / "backups" / ids[1] / "manifest.json"
    manifest.write_bytes(manifest.read_bytes().replace(b'"files"', b'"filez"', 1) + b" ")
    listed = cli("backups", "list", "--json", *args)
    assert listed.returncode == 0, listed.stderr
    entries = json_of(listed)["backups"]
    assert [e["id"] for e in entries] == ids
    assert "error" not in entries[0]
    assert "manifest.json is damaged" in entries[1]["error"]
    text = cli("backups", "list", *args)
    assert text.returncode == 0, text.stderr
    assert f"{ids[1]}  DAMAGED" in text.stdout
    assert ids[2] in text.stdout
    status = cli("status", "--json", *args)
    assert status.returncode == 0, status.stderr
    payload = json_of(status)
    assert payload["backups"] == 2
    assert [d["id"] for d in payload["damaged_backups"]] == [ids[1]]
    shown_status = cli("status", *args)
    assert shown_status.returncode == 0
    assert f"backup {ids[1]} is DAMAGED" in shown_status.stdout


@pytest.mark.parametrize(
    "garbage",
    [bytes(range(256)) * 8, b"\x10\x00\x01\x01\x00\x40\x20\x20" + b"\xff" * 4000],
    ids=["garbage-header", "sane-header-garbage-pages"],
)
def test_a_damaged_file_with_the_sqlite_header_is_backed_up_as_a_plain_file(
    installation: Path, migrations: MigrationWriter, garbage: bytes
) -> None:
    damaged = installation / "data" / "cache.db"
    damaged.parent.mkdir()
    damaged.write_bytes(b"SQLite format 3\x00" + garbage)
    args = common(installation, migrations)
    migrations.add(
        "v1.0_to_v1.1",
        "1_a.py",
        forward="(project_root / 'data' / 'cache.db').write_bytes(b'overwritten')\nreturn True",
    )
    migrations.add("v1.0_to_v1.1", "2_b.py", forward="return False")
    assert main(["stamp", "1.0", *args]) == 0
    before = tree_digest(installation)
    created = cli("backups", "create", "--json", *args)
    assert created.returncode == 0, created.stderr
    if garbage.startswith(b"\x10\x00"):  # a sane header: SQLite itself has to say no
        assert "backup.not_a_database" in created.stderr
        assert "data/cache.db" in created.stderr
    else:  # the header alone shows it is no database: a plain file from the start
        assert "backup.not_a_database" not in created.stderr
    assert tree_digest(installation) == before  # no -wal or -shm left beside it
    failed = cli("upgrade", "--json", *args)
    assert failed.returncode == 1, failed.stderr
    assert json_of(failed)["verified_identical"] is True
    assert tree_digest(installation) == before
    migrations.root.joinpath("v1.0_to_v1.1", "2_b.py").unlink()
    upgraded = cli("upgrade", "--json", *args)
    assert upgraded.returncode == 0, upgraded.stderr
    assert damaged.read_bytes() == b"overwritten"


def _unprivileged_installation(reachable: Path) -> Path:
    root = reachable / "install"
    (root / "migrations" / "v1.0_to_v1.1").mkdir(parents=True)
    (root / "migrations" / "v1.0_to_v1.1" / "1_a.py").write_text(
        "MIGRATION_INFO = {'version_from': '1.0', 'version_to': '1.1', 'description': 'd',"
        " 'breaking_changes': False, 'estimated_duration_seconds': 1, 'requires_restart': []}\n"
        "def migrate_forward(root):\n    (root / 'changed').write_text('x')\n    return False\n"
        "def migrate_backward(root):\n    return True\n"
    )
    (root / "private").mkdir()
    (root / "private" / "key").write_text("k")
    for path in (root, *root.rglob("*")):
        os.chown(path, UNPRIVILEGED, UNPRIVILEGED, follow_symlinks=False)
    return root


def test_a_folder_another_user_owns_and_keeps_closed_stops_the_backup_naming_it(
    reachable: Path,
) -> None:
    root = _unprivileged_installation(reachable)
    os.chown(root / "private", 0, 0)
    (root / "private").chmod(0o700)
    assert as_unprivileged("stamp", "1.0", "--root", str(root)).returncode == 0
    before = tree_digest(root)
    for command in (["backups", "create"], ["upgrade", "--no-restart"]):
        done = as_unprivileged(*command, "--json", "--root", str(root))
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        error = json_of(done)["error"]
        assert f"{root / 'private'}: cannot be read (Permission denied)" in error
        assert tree_digest(root) == before


def test_a_file_the_process_may_not_read_stops_the_backup_naming_it_as_unreadable(
    reachable: Path,
) -> None:
    root = _unprivileged_installation(reachable)
    secret = root / "private" / "key"
    os.chown(secret, 0, 0)
    secret.chmod(0o600)
    assert as_unprivileged("stamp", "1.0", "--root", str(root)).returncode == 0
    done = as_unprivileged("backups", "create", "--json", "--root", str(root))
    assert done.returncode == 2, done.stderr
    error = json_of(done)["error"]
    assert f"{secret}: cannot be read (Permission denied); no backup was taken" in error
    assert "written" not in error


def test_a_folder_its_owner_made_unreadable_is_backed_up_and_closed_again(
    reachable: Path,
) -> None:
    root = _unprivileged_installation(reachable)
    (root / "private").chmod(0)
    assert as_unprivileged("stamp", "1.0", "--root", str(root)).returncode == 0
    before = tree_digest(root)
    done = as_unprivileged("backups", "create", "--json", "--root", str(root))
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE((root / "private").stat().st_mode) == 0
    failed = as_unprivileged("upgrade", "--no-restart", "--json", "--root", str(root))
    assert failed.returncode == 1, failed.stderr
    assert json_of(failed)["verified_identical"] is True
    assert tree_digest(root) == before


def test_a_rehearsal_keeps_the_last_lines_of_a_flood_of_output(
    installation: Path, migrations: MigrationWriter
) -> None:
    migrations.add(
        "v1.0_to_v1.1",
        "1_a.py",
        forward="for i in range(5_000):\n    print(i)\nprint('v' * 5_000)\nreturn True",
    )
    done = cli("verify", "--from", "1.0", "--json", *common(installation, migrations))
    assert done.returncode == 0, done.stderr
    output = json_of(done)["calls"][0]["output"]
    assert output[0]["stream"] == "omitted"
    assert {entry["stream"] for entry in output[1:]} == {"stdout"}
    first = [entry["line"] for entry in output]
    assert len(first) == 201
    assert first[0] == "… 4,801 earlier lines not shown (see the run log)"
    assert first[1:3] == ["4801", "4802"]
    assert first[-1] == "v" * 4_000 + "… (1,000 more characters in the run log)"


def test_the_state_store_creates_its_folder_private_whatever_the_umask(tmp_path: Path) -> None:
    from dopemux_update import State, StateStore

    state_dir = tmp_path / ".dopemux" / "update"
    old = os.umask(0)
    try:
        StateStore(state_dir).write(State(installed_version="1.0"))
    finally:
        os.umask(old)
    assert [mode_of(p) for p in (state_dir.parent, state_dir, state_dir / "state.json")] == [
        0o700,
        0o700,
        0o600,
    ]


def test_verify_treats_a_file_that_only_starts_like_sqlite_as_a_plain_file(
    installation: Path, migrations: MigrationWriter
) -> None:
    (installation / "looks-like.db").write_bytes(b"SQLite format 3\x00" + b"not a database " * 20)
    migrations.add("v1.0_to_v1.1", "1_a.py")
    (installation / ".dopemux" / "update").mkdir(parents=True)
    done = cli("verify", "--from", "1.0", "--json", *common(installation, migrations))
    assert done.returncode == 0, done.stdout + done.stderr
    assert json_of(done)["ok"] is True
