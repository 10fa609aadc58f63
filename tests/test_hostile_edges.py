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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import MigrationWriter, tree_digest

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
    assert {str(p.relative_to(root)): oct(mode_of(p)) for p in folders} == {
        str(p.relative_to(root)): "0o700" for p in folders
    }
    assert {str(p.relative_to(root)): oct(mode_of(p)) for p in files} == {
        str(p.relative_to(root)): "0o600" for p in files
    }
    names = {p.name for p in files}
    assert {"lock", "state.json", "manifest.json"} <= names
    assert any(p.suffix == ".jsonl" for p in files)  # the run logs


@pytest.mark.parametrize("command", ["upgrade", "recover", "status", "stamp"])
def test_a_state_folder_writable_by_others_is_refused_and_nothing_changes(
    installation: Path, migrations: MigrationWriter, command: str
) -> None:
    migrations.add("v1.0_to_v1.1", "1_a.py", forward="(project_root / 'new').write_text('x')")
    assert cli("stamp", "1.0", *common(installation, migrations)).returncode == 0
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
    assert cli("stamp", "1.0", *common(installation, migrations)).returncode == 0
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
    assert cli("stamp", "1.0", *common(installation, migrations)).returncode == 0
    planted = installation / ".dopemux" / "update" / name
    if not planted.exists():
        planted.write_text('{"kind": "run_started"}\n')
    planted.chmod(0o666)
    done = cli("recover", *common(installation, migrations))
    assert done.returncode == 2, done.stderr
    assert str(planted) in done.stderr
    assert "writable by other users" in done.stderr


def test_a_dopemux_folder_writable_by_others_is_refused(
    installation: Path, migrations: MigrationWriter
) -> None:
    migrations.add("v1.0_to_v1.1", "1_a.py")
    assert cli("stamp", "1.0", *common(installation, migrations)).returncode == 0
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
    from dopemux_update._lock import holding_lock

    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o770)
    with pytest.raises(UnsafeStateError, match="writable by other users"), holding_lock(state):
        pass
    assert not (state / "lock").exists()
