"""`dopemux-update verify`: rehearsals on a sandbox copy that never touch the installation."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import pytest

from conftest import EXAMPLE_MIGRATIONS, MigrationWriter, tree_digest
from dopemux_update import MigrationValidationError
from dopemux_update._authoring._rehearsal import RehearsalReport, rehearse
from dopemux_update._safety._journal import Journal
from dopemux_update._safety._lock import holding_lock
from dopemux_update.cli import main
from dopemux_update.testing import run_forward

V1 = "v0.1.0_to_v0.2.0"
LEAVES_A_FILE = """
(project_root / 'leftover.txt').write_text('I stay behind')
return True
"""


def fifos(folder: Path, *names: str) -> list[Path]:
    """Named pipes a migration and the test use to wait for each other (no sleeps)."""
    paths = [folder / name for name in names]
    for path in paths:
        os.mkfifo(path)
    return paths


def waiting_forward(started: Path | None, release: Path) -> str:
    """A forward body that says it started (if asked), then waits until ``release`` opens."""
    announce = f"open({str(started)!r}, 'w').close()\n" if started is not None else ""
    return f"{announce}with open({str(release)!r}) as f:\n    f.read()\nreturn True"


def rehearse_now(root: Path, migrations: MigrationWriter, **options: Any) -> RehearsalReport:
    """The rehearsal from 0.1.0, run to its end on an event loop of its own."""
    return anyio.run(
        functools.partial(
            rehearse,
            project_root=root,
            migrations_dir=migrations.root,
            current_version="0.1.0",
            **options,
        )
    )


def verify_process(root: Path, migrations: Path, *extra: str) -> subprocess.Popen[str]:
    """`dopemux-update verify` as a real child process, its output piped."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dopemux_update",
            "verify",
            "--root",
            str(root),
            "--migrations",
            str(migrations),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def verify(root: Path, migrations: Path, *extra: str) -> int:
    return main(["verify", "--root", str(root), "--migrations", str(migrations), *extra])


def three_migrations(migrations: MigrationWriter, *, middle_backward: str = "return True") -> None:
    migrations.add(
        V1,
        "001_first.py",
        forward="(project_root / 'first.txt').write_text('1')\nreturn True",
        backward="(project_root / 'first.txt').unlink()\nreturn True",
    )
    migrations.add(
        V1,
        "002_middle.py",
        forward=(
            "p = project_root / 'config' / 'app.yaml'\n"
            "p.write_text(p.read_text() + 'middle: true\\n')\n"
            "(project_root / 'leftover.txt').write_text('made by forward')\n"
            "return True"
        ),
        backward=(
            "p = project_root / 'config' / 'app.yaml'\n"
            "p.write_text(p.read_text().replace('middle: true\\n', ''))\n" + middle_backward
        ),
    )
    migrations.add(V1, "003_last.py")


def test_a_clean_plan_rehearses_clean_and_touches_nothing(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    three_migrations(
        migrations, middle_backward="(project_root / 'leftover.txt').unlink()\nreturn True"
    )
    before = tree_digest(installation)
    assert verify(installation, migrations.root, "--from", "0.1.0", "--json") == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["ok"] is True
    assert payload["migrations"] == [f"{V1}/001_first", f"{V1}/002_middle", f"{V1}/003_last"]
    stages = [(c["stage"], c["id"].rsplit("/", 1)[1]) for c in payload["calls"]]
    assert stages == [
        ("apply", "001_first"),
        ("apply", "002_middle"),
        ("apply", "003_last"),
        ("revert", "003_last"),
        ("revert", "002_middle"),
        ("revert", "001_first"),
        ("apply again", "001_first"),
        ("apply again", "002_middle"),
        ("apply again", "003_last"),
    ]
    assert tree_digest(installation) == before
    assert migrations.calls_made()  # the migrations really ran (on the sandbox)


def test_a_backward_that_leaves_a_file_behind_is_found_and_named(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    three_migrations(migrations)  # 002's backward forgets leftover.txt
    before = tree_digest(installation)
    assert verify(installation, migrations.root, "--from", "0.1.0") == 1
    out = capsys.readouterr().out
    assert "Rehearsal FAILED at the compare stage" in out
    assert f"Responsible: {V1}/002_middle" in out
    assert "added:   leftover.txt" in out
    assert tree_digest(installation) == before


def test_the_report_in_json_names_culprit_and_differences(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    three_migrations(migrations)
    assert verify(installation, migrations.root, "--from", "0.1.0", "--json") == 1
    payload = json.loads(capsys.readouterr().out)
    assert payload["exit_code"] == 1
    assert (payload["stage"], payload["culprit"], payload["isolated"]) == (
        "compare",
        f"{V1}/002_middle",
        True,
    )
    assert payload["differences"]["added"] == ["leftover.txt"]


def test_a_failing_backward_is_reported_with_its_output(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    migrations.add(V1, "001_ok.py")
    migrations.add(V1, "002_bad.py", backward="print('  → cannot undo this')\nreturn False")
    assert verify(installation, migrations.root, "--from", "0.1.0") == 1
    out = capsys.readouterr().out
    assert f"FAILED at the revert stage: {V1}/002_bad: migrate_backward returned False" in out
    assert "| " + "  → cannot undo this" in out


def test_a_forward_that_cannot_run_twice_fails_the_apply_again_stage(
    installation: Path, migrations: MigrationWriter, tmp_path: Path
) -> None:
    marker = tmp_path / "ran-once"  # outside the installation: not undone by a revert
    migrations.add(
        V1,
        "001_once.py",
        forward=(
            f"m = Path({str(marker)!r})\n"
            "if m.exists():\n"
            "    raise RuntimeError('already migrated once')\n"
            "m.write_text('')\nreturn True"
        ),
    )
    report = rehearse_now(installation, migrations)
    assert (report.ok, report.stage, report.culprit) == (False, "apply again", f"{V1}/001_once")
    assert report.error is not None
    assert "raised RuntimeError: already migrated once" in report.error


def test_interference_between_migrations_is_reported_without_a_culprit(
    installation: Path, migrations: MigrationWriter, tmp_path: Path
) -> None:
    """Each reverts cleanly on its own, but not together: no single migration is blamed."""
    count = tmp_path / "forward-count"
    migrations.add(
        V1,
        "001_counts.py",
        forward=(
            f"c = Path({str(count)!r})\n"
            "c.write_text(str(int(c.read_text() or 0) + 1) if c.exists() else '1')\nreturn True"
        ),
    )
    migrations.add(
        V1,
        "002_depends.py",
        backward=(
            f"if Path({str(count)!r}).read_text() == '1':\n"
            "    (project_root / 'stray.txt').write_text('')\n"
            "return True"
        ),
    )
    report = rehearse_now(installation, migrations)
    assert (report.ok, report.stage, report.culprit) == (False, "compare", None)
    assert report.differences.added == ("stray.txt",)
    assert report.error is not None
    assert "interfere" in report.error


def test_sqlite_differences_name_tables_and_rows(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    db = installation / ".dopemux" / "app.db"
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("CREATE TABLE decisions (id INTEGER PRIMARY KEY, text TEXT)")
        conn.execute("INSERT INTO decisions VALUES (1, 'use sqlite'), (2, 'use yaml')")
    migrations.add(
        V1,
        "001_reword.py",
        forward=(
            "import sqlite3\n"
            "c = sqlite3.connect(project_root / '.dopemux' / 'app.db')\n"
            "with c:\n"
            '    c.execute("UPDATE decisions SET text = upper(text)")\n'
            "c.close()\nreturn True"
        ),
        backward=(
            "import sqlite3\n"
            "c = sqlite3.connect(project_root / '.dopemux' / 'app.db')\n"
            "with c:\n"
            '    c.execute("UPDATE decisions SET text = lower(text) WHERE id = 1")\n'
            "c.close()\nreturn True"
        ),
    )
    assert verify(installation, migrations.root, "--from", "0.1.0") == 1
    out = capsys.readouterr().out
    assert "changed: .dopemux/app.db, decisions: 1 row changed (id=2)" in out


def test_a_wal_database_held_open_is_rehearsed_with_its_unflushed_rows(
    installation: Path, migrations: MigrationWriter
) -> None:
    db = installation / ".dopemux" / "live.db"
    with closing(sqlite3.connect(db)) as holder:
        holder.execute("PRAGMA journal_mode=WAL").fetchall()
        holder.execute("PRAGMA wal_autocheckpoint=0")
        with holder:
            holder.execute("CREATE TABLE t (v)")
            holder.execute("INSERT INTO t VALUES (1), (2), (3)")
        migrations.add(
            V1,
            "001_count.py",
            forward=(
                "import sqlite3\n"
                "c = sqlite3.connect(project_root / '.dopemux' / 'live.db')\n"
                "n = c.execute('SELECT count(*) FROM t').fetchone()[0]\n"
                "mode = c.execute('PRAGMA journal_mode').fetchone()[0]\n"
                "c.close()\n"
                "return n == 3 and mode == 'wal'"
            ),
        )
        report = rehearse_now(installation, migrations)
    assert report.ok, report.describe()


def test_keep_sandbox_leaves_it_for_inspection(
    installation: Path, migrations: MigrationWriter, tmp_path: Path
) -> None:
    three_migrations(migrations)
    report = rehearse_now(
        installation, migrations, sandbox_dir=tmp_path / "sandboxes", keep_sandbox=True
    )
    assert report.sandbox is not None
    assert (report.sandbox / "sandbox" / "config" / "app.yaml").is_file()
    assert (report.sandbox / "sandbox" / "secret.env").stat().st_mode & 0o777 == 0o600


def test_the_sandbox_is_removed_afterwards(
    installation: Path, migrations: MigrationWriter, tmp_path: Path
) -> None:
    three_migrations(migrations)
    sandboxes = tmp_path / "sandboxes"
    assert (
        verify(installation, migrations.root, "--from", "0.1.0", "--sandbox-dir", str(sandboxes))
        == 1
    )
    assert list(sandboxes.iterdir()) == []


async def _rehearse_cancelled(
    installation: Path,
    migrations: MigrationWriter,
    sandboxes: Path,
    gate: object,
    *,
    hold_the_loop: float = 0.0,
) -> anyio.CancelScope:
    """Rehearse ``001_waits`` (which waits on ``gate``) and ``002_never``, cancelling the
    rehearsal once the first has started; the canceller then holds the event loop for
    ``hold_the_loop`` seconds. Returns the cancelled scope."""
    migrations.add(
        V1,
        "001_waits.py",
        forward=("import dopemux_test_gate as g\ng.started.set()\ng.release.wait(10)\nreturn True"),
    )
    migrations.add(V1, "002_never.py")
    with anyio.CancelScope() as scope:

        async def cancel_when_started() -> None:
            await anyio.to_thread.run_sync(gate.started.wait, 10)  # type: ignore[attr-defined]
            scope.cancel()
            gate.release.set()  # type: ignore[attr-defined]
            if hold_the_loop:
                time.sleep(hold_the_loop)  # noqa: ASYNC251 - holds the event loop on purpose

        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_when_started)
            await rehearse(
                project_root=installation,
                migrations_dir=migrations.root,
                current_version="0.1.0",
                sandbox_dir=sandboxes,
            )
    return scope


@pytest.mark.anyio
async def test_cancelling_stops_the_rehearsal_and_removes_the_sandbox(
    installation: Path, migrations: MigrationWriter, tmp_path: Path, gate: object
) -> None:
    sandboxes = tmp_path / "sandboxes"
    scope = await _rehearse_cancelled(installation, migrations, sandboxes, gate)
    assert scope.cancelled_caught
    assert list(sandboxes.iterdir()) == []
    # The cancellation reaches the rehearsal's thread through the event loop: the call that
    # ends as it is delivered may be followed by one more (on the sandbox), never by more.
    calls = migrations.calls_made()
    assert calls[0] == f"forward {V1}/001_waits"
    assert calls[1:] in ([], [f"forward {V1}/002_never"])


@pytest.mark.anyio
async def test_a_cancelled_rehearsal_stops_at_its_next_call_even_while_the_loop_is_busy(
    installation: Path, migrations: MigrationWriter, tmp_path: Path, gate: object
) -> None:
    """The rehearsal's thread reads the cancellation itself: it does not wait for the event
    loop (here held by the canceller) to pass it on, and runs no further migration."""
    sandboxes = tmp_path / "sandboxes"
    scope = await _rehearse_cancelled(installation, migrations, sandboxes, gate, hold_the_loop=0.5)
    assert scope.cancelled_caught
    assert list(sandboxes.iterdir()) == []
    assert migrations.calls_made() == [f"forward {V1}/001_waits"]


def test_a_bad_migration_is_a_usage_error_naming_the_file(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    migrations.add(V1, "001_typo.py", info={"requires_restarts": ["x"]})
    before = tree_digest(installation)
    assert verify(installation, migrations.root, "--from", "0.1.0") == 2
    err = capsys.readouterr().err
    assert "001_typo.py" in err
    assert tree_digest(installation) == before
    with pytest.raises(MigrationValidationError):
        rehearse_now(installation, migrations)


def test_an_interrupted_update_must_be_recovered_first(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    migrations.add(V1, "001_ok.py")
    journal = Journal(installation / ".dopemux" / "update")
    journal.path.parent.mkdir(parents=True)
    journal.path.write_text("{}\n")
    assert verify(installation, migrations.root, "--from", "0.1.0") == 3
    assert "recover" in capsys.readouterr().err


def test_verify_refuses_while_another_process_holds_the_lock(
    installation: Path, migrations: MigrationWriter
) -> None:
    migrations.add(V1, "001_ok.py")
    state_dir = installation / ".dopemux" / "update"
    state_dir.mkdir(parents=True)
    with holding_lock(state_dir):
        # Another process (the one running `verify`) must be refused at once.
        process = verify_process(installation, migrations.root, "--from", "0.1.0")
        _, err = process.communicate(timeout=60)
    assert process.returncode == 4, err


def test_the_shipped_examples_rehearse_clean_in_a_subprocess(example_copy: Path) -> None:
    before = tree_digest(example_copy)
    process = verify_process(example_copy, EXAMPLE_MIGRATIONS, "--json")
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, out + err
    payload = json.loads(out)
    assert payload["ok"] is True
    assert payload["version_to"] == "0.3.0"  # the newest example set
    assert tree_digest(example_copy) == before


NAIVE_YAML = """
import json
p = project_root / 'config' / 'app.yaml'
# What yaml.safe_load + yaml.dump does to a file: values kept, comments gone.
pairs = [line.split(': ', 1) for line in p.read_text().splitlines() if line and line[0] != '#']
doc = dict(pairs)
{change}
p.write_text(''.join(f'{{k}}: {{v}}\\n' for k, v in doc.items()))
return True
"""

HELPER_YAML = """
from dopemux_update import edit
with edit.edit_yaml(project_root / 'config' / 'app.yaml') as doc:
    {change}
return True
"""


def test_a_naive_yaml_rewrite_that_loses_a_comment_fails_verify_and_the_helper_passes(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    migrations.add(
        V1,
        "001_naive.py",
        forward=NAIVE_YAML.format(change="doc['workers'] = '4'"),
        backward=NAIVE_YAML.format(change="doc.pop('workers', None)"),
    )
    assert "# keep me" in (installation / "config" / "app.yaml").read_text()
    assert verify(installation, migrations.root, "--from", "0.1.0") == 1
    out = capsys.readouterr().out
    assert "changed: config/app.yaml (content)" in out
    assert f"Responsible: {V1}/001_naive" in out

    (migrations.root / V1 / "001_naive.py").unlink()
    migrations.add(
        V1,
        "001_helper.py",
        forward=HELPER_YAML.format(change="doc['workers'] = 4"),
        backward=HELPER_YAML.format(change="doc.pop('workers', None)"),
    )
    assert verify(installation, migrations.root, "--from", "0.1.0") == 0


def test_a_sandbox_folder_inside_the_installation_is_refused(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    migrations.add(V1, "001_ok.py")
    before = tree_digest(installation)
    inside = installation / "empty"
    assert (
        verify(installation, migrations.root, "--from", "0.1.0", "--sandbox-dir", str(inside)) == 2
    )
    assert "inside the installation" in capsys.readouterr().err
    assert tree_digest(installation) == before


def test_an_unreadable_file_is_a_clear_error_and_no_sandbox_is_left(
    installation: Path,
    migrations: MigrationWriter,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    migrations.add(V1, "001_ok.py")
    secret = installation / "secret.env"
    sandboxes = tmp_path / "sandboxes"
    real_open = os.open

    def refuse(path: object, *args: object, **kwargs: object) -> int:
        if str(path) == str(secret):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "open", refuse)
        code = verify(
            installation, migrations.root, "--from", "0.1.0", "--sandbox-dir", str(sandboxes)
        )
    assert code == 2
    err = capsys.readouterr().err
    assert "secret.env: cannot be copied into the sandbox" in err
    assert "secret.env" in err
    assert list(sandboxes.iterdir()) == []


def test_ctrl_c_stops_the_rehearsal_removes_the_sandbox_and_exits_130(
    installation: Path, migrations: MigrationWriter, tmp_path: Path
) -> None:
    started, release = fifos(tmp_path, "started", "release")
    migrations.add(V1, "001_waits.py", forward=waiting_forward(started, release))
    migrations.add(V1, "002_never.py")
    sandboxes = tmp_path / "sandboxes"
    before = tree_digest(installation)
    process = verify_process(
        installation,
        migrations.root,
        "--from",
        "0.1.0",
        "--sandbox-dir",
        str(sandboxes),
        "--json",
    )
    with open(started) as handle:  # the first migration is running on the sandbox
        handle.read()
    process.send_signal(signal.SIGINT)
    assert process.stderr is not None
    for line in process.stderr:
        if "stopping the rehearsal" in line:
            break
    with open(release, "w"):
        pass
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert json.loads(out)["exit_code"] == 130
    assert list(sandboxes.iterdir()) == []
    assert tree_digest(installation) == before
    assert migrations.calls_made() == [f"forward {V1}/001_waits"]


def test_a_downgrade_plan_is_rehearsed_backward_then_forward(
    example_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_forward(EXAMPLE_MIGRATIONS / V1, example_copy)  # the installation is now at 0.2.0
    args = ["--from", "0.2.0", "--to", "0.1.0", "--json"]
    assert verify(example_copy, EXAMPLE_MIGRATIONS, *args) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["direction"] == "downgrade"
    calls = [(c["stage"], c["function"], c["id"].rsplit("/", 1)[1][:3]) for c in payload["calls"]]
    assert calls[:4] == [
        ("apply", "migrate_backward", "002"),
        ("apply", "migrate_backward", "001"),
        ("revert", "migrate_forward", "001"),
        ("revert", "migrate_forward", "002"),
    ]


def test_an_absolute_symlink_into_the_installation_leads_into_the_sandbox(
    installation: Path, migrations: MigrationWriter
) -> None:
    """Writing through it must change the sandbox's file, never the installation's."""
    (installation / "shared.yaml").symlink_to(installation / "config" / "app.yaml")
    migrations.add(
        V1,
        "001_through_link.py",
        forward="(project_root / 'shared.yaml').write_text('changed: true\\n')\nreturn True",
        backward="return True",  # does not undo it: the rehearsal must see that in the sandbox
    )
    before = tree_digest(installation)
    report = rehearse_now(installation, migrations)
    assert tree_digest(installation) == before
    assert (report.ok, report.culprit) == (False, f"{V1}/001_through_link")
    assert [(c.path, c.what) for c in report.differences.changed] == [
        ("config/app.yaml", "content")
    ]


def test_symlinks_leading_outside_are_refused_all_at_once_and_nothing_runs(
    installation: Path,
    migrations: MigrationWriter,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (installation / "data").symlink_to(outside)
    (installation / "config" / "up").symlink_to("../../elsewhere")
    migrations.add(V1, "001_ok.py")
    assert verify(installation, migrations.root, "--from", "0.1.0") == 2
    err = capsys.readouterr().err
    assert "2 symlink(s) lead outside the installation" in err
    assert f"data -> {outside}" in err
    assert "config/up -> ../../elsewhere" in err
    assert migrations.calls_made() == []
    assert (
        verify(
            installation,
            migrations.root,
            "--from",
            "0.1.0",
            "--exclude",
            "data",
            "--exclude",
            "config/up",
        )
        == 0
    )


def test_reading_a_closed_wal_database_leaves_no_sidecar_files_behind(
    installation: Path, migrations: MigrationWriter
) -> None:
    db = installation / ".dopemux" / "wal.db"
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA journal_mode=WAL").fetchall()
        with conn:
            conn.execute("CREATE TABLE t (v)")
    assert not Path(f"{db}-wal").exists()
    migrations.add(V1, "001_ok.py")
    before = sorted(p.name for p in db.parent.iterdir()), db.read_bytes()
    assert rehearse_now(installation, migrations).ok
    assert (sorted(p.name for p in db.parent.iterdir()), db.read_bytes()) == before


def test_a_database_whose_name_is_not_utf8_is_rehearsed(
    installation: Path, migrations: MigrationWriter
) -> None:
    db = installation / os.fsdecode(b"caf\xe9.db")
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("CREATE TABLE t (v)")
    migrations.add(V1, "001_ok.py")
    assert rehearse_now(installation, migrations).ok


def test_a_migration_past_its_timeout_fails_the_rehearsal_and_is_named(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    migrations.add(V1, "001_slow.py", forward="import time\ntime.sleep(0.5)\nreturn True")
    args = ["--from", "0.1.0", "--timeout", "0.1", "--grace", "5", "--json"]
    assert verify(installation, migrations.root, *args) == 1
    payload = json.loads(capsys.readouterr().out)
    assert (payload["stage"], payload["culprit"]) == ("apply", f"{V1}/001_slow")
    assert payload["error"] == f"{V1}/001_slow: migrate_forward timed out after 0.1s"


def test_a_migration_that_never_ends_is_abandoned_after_the_grace_period(
    installation: Path, migrations: MigrationWriter, tmp_path: Path
) -> None:
    (never,) = fifos(tmp_path, "never")
    migrations.add(V1, "001_hangs.py", forward=waiting_forward(None, never))
    migrations.add(V1, "002_never_runs.py")
    sandboxes = tmp_path / "sandboxes"
    report = rehearse_now(
        installation, migrations, migration_timeout=0.1, grace=0.2, sandbox_dir=sandboxes
    )
    assert (report.ok, report.stage, report.culprit) == (False, "apply", f"{V1}/001_hangs")
    assert report.error is not None
    assert "timed out after 0.1s; its thread did not end and was abandoned" in report.error
    assert migrations.calls_made() == [f"forward {V1}/001_hangs"]
    assert list(sandboxes.iterdir()) == []
    with open(never, "w"):  # let the abandoned thread end
        pass


def test_ctrl_c_ends_verify_even_when_a_migration_hangs(
    installation: Path, migrations: MigrationWriter, tmp_path: Path
) -> None:
    started, never = fifos(tmp_path, "started", "never")
    migrations.add(V1, "001_hangs.py", forward=waiting_forward(started, never))
    before = tree_digest(installation)
    process = verify_process(
        installation,
        migrations.root,
        "--from",
        "0.1.0",
        "--grace",
        "0.5",
    )
    with open(started) as handle:
        handle.read()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert "the rehearsal was stopped" in out
    assert tree_digest(installation) == before


def test_the_report_carries_the_failing_calls_traceback(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    migrations.add(V1, "001_boom.py", forward="raise KeyError('missing_key')")
    assert verify(installation, migrations.root, "--from", "0.1.0") == 1
    out = capsys.readouterr().out
    assert f"Traceback of {V1}/001_boom (migrate_forward):" in out
    assert "KeyError: 'missing_key'" in out


def test_links_that_climb_out_and_back_in_or_out_through_another_link_are_contained(
    installation: Path,
    migrations: MigrationWriter,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Resolved as the kernel resolves them: whatever their text, a link leads into the copy
    or is refused."""
    depth = len(installation.parts) + 2
    climb = "../" * depth + str(installation / ".dopemux" / "data.txt").lstrip("/")
    (installation / "config" / "climb").symlink_to(climb)  # to / and back into the installation
    migrations.add(
        V1,
        "001_writes_through.py",
        forward="(project_root / 'config' / 'climb').write_text('sandbox\\n')\nreturn True",
    )
    before = tree_digest(installation)
    report = rehearse_now(installation, migrations)
    assert tree_digest(installation) == before  # the live file was never written
    assert [(c.path, c.what) for c in report.differences.changed] == [
        (".dopemux/data.txt", "content")
    ]

    victim = tmp_path / "victim.txt"
    victim.write_text("untouched\n")
    (installation / "config" / "climb").unlink()
    (installation / "config" / "up").symlink_to("..")  # inside
    sneaky = "up/config/up/" + "../" * depth + str(victim).lstrip("/")  # out, through `up`
    (installation / "config" / "sneaky").symlink_to(sneaky)
    assert verify(installation, migrations.root, "--from", "0.1.0") == 2
    assert f"config/sneaky -> {sneaky}" in capsys.readouterr().err
    assert victim.read_text() == "untouched\n"


def test_a_native_asyncio_cancellation_waits_for_the_sandbox_to_be_removed(
    installation: Path, migrations: MigrationWriter, tmp_path: Path, gate: object
) -> None:
    """`asyncio.wait_for` cancels with task.cancel(): the rehearsal still ends cleanly."""
    migrations.add(
        V1,
        "001_waits.py",
        forward="import dopemux_test_gate as g\ng.started.set()\ng.release.wait(10)\nreturn True",
    )
    sandboxes = tmp_path / "sandboxes"

    async def main() -> None:
        task = asyncio.ensure_future(
            rehearse(
                project_root=installation,
                migrations_dir=migrations.root,
                current_version="0.1.0",
                sandbox_dir=sandboxes,
            )
        )
        await asyncio.to_thread(gate.started.wait, 10)  # type: ignore[attr-defined]
        task.cancel()
        await asyncio.sleep(0.2)  # the thread is still in the migration: the task must wait
        assert not task.done()
        gate.release.set()  # type: ignore[attr-defined]
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert list(sandboxes.iterdir()) == []


def test_a_result_whose_repr_fails_is_still_judged(
    installation: Path, migrations: MigrationWriter
) -> None:
    migrations.add(
        V1,
        "001_odd.py",
        forward=(
            "class Odd:\n"
            "    def __repr__(self):\n"
            "        raise RuntimeError('no repr')\n"
            "return Odd()"
        ),
    )
    report = rehearse_now(installation, migrations)
    assert report.error == f"{V1}/001_odd: migrate_forward returned <Odd object> (Odd), not a bool"


def test_verify_leaves_at_once_when_a_timed_out_migration_is_abandoned(
    installation: Path, migrations: MigrationWriter, tmp_path: Path
) -> None:
    (never,) = fifos(tmp_path, "never")
    migrations.add(V1, "001_hangs.py", forward=waiting_forward(None, never))
    process = verify_process(
        installation,
        migrations.root,
        "--from",
        "0.1.0",
        "--timeout",
        "0.1",
        "--grace",
        "0.2",
        "--json",
    )
    out, err = process.communicate(timeout=30)
    assert process.returncode == 1, err
    payload = json.loads(out)
    assert (payload["abandoned"], payload["culprit"]) == (True, f"{V1}/001_hangs")


def test_a_rehearsal_writes_a_run_log_named_in_its_output_and_a_refused_one_none(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    migrations.add(V1, "001_boom.py", forward="print('  → about to fail')\nraise KeyError('k')")
    (installation / ".dopemux" / "update").mkdir(parents=True)  # verify never makes one
    assert verify(installation, migrations.root, "--from", "0.1.0", "--json") == 1
    log = Path(json.loads(capsys.readouterr().out)["log"])
    assert log.parent == installation / ".dopemux" / "update" / "logs"
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert any(
        e.get("line") == "  → about to fail" and e["event"] == "verify.output" for e in events
    )
    assert any("KeyError: 'k'" in str(e.get("traceback", "")) for e in events)
    log.unlink()
    migrations.add(V1, "002_typo.py", info={"requires_restarts": []})
    assert verify(installation, migrations.root, "--from", "0.1.0") == 2
    assert list(log.parent.iterdir()) == []
