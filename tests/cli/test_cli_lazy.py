"""Start-up: the command line imports a command's module only when that command runs."""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
import xxhash
from pydantic import BaseModel, ConfigDict, ValidationError

from conftest import EXAMPLE_INSTALLATION, EXAMPLE_MIGRATIONS
from dopemux_update import Scope, cli
from dopemux_update._backup import _listing, _manifest
from dopemux_update._backup._store import BackupInfo, BackupStore
from dopemux_update._core._exceptions import StateError
from dopemux_update._safety._state import StateStore
from dopemux_update.cli import _status
from dopemux_update.cli._backups import DamagedBackup, read_backups
from support.manifests import encoded, named

HEAVY = ("rich", "pydantic", "anyio", "asyncio", "structlog")


def _loaded_by(*args: str) -> tuple[str, set[str]]:
    """What ``dopemux-update ARGS``, run in a new process, prints, and every module it
    imports (whatever its exit code)."""
    code = (
        "import sys\n"
        "from dopemux_update.cli import main\n"
        f"main({list(args)!r})\n"
        "print(' '.join(sorted(sys.modules)), file=sys.stderr)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return run.stdout, set(run.stderr.split())


def _imported_by(*args: str) -> tuple[set[str], set[str]]:
    """The package's modules and the heavy libraries that ``dopemux-update ARGS`` imports."""
    _, loaded = _loaded_by(*args)
    ours = {name for name in loaded if name.startswith("dopemux_update.")}
    return ours, {name for name in HEAVY if name in loaded}


def test_help_imports_no_command_and_none_of_rich_pydantic_anyio_asyncio_structlog() -> None:
    ours, heavy = _imported_by("--help")
    assert ours <= {
        "dopemux_update.cli",
        "dopemux_update.cli._exit",
        "dopemux_update._core",
        "dopemux_update._core._exceptions",
    }
    assert heavy == set()


def test_a_command_imports_its_own_module_and_not_the_others() -> None:
    ours, _ = _imported_by("history", "--help")
    assert "dopemux_update.cli._history" in ours
    assert not ours & {"dopemux_update.cli._update", "dopemux_update.cli._verify"}


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_the_command_table_matches_each_command(name: str) -> None:
    module, attribute, _ = cli.COMMANDS[name]
    command = getattr(importlib.import_module(module, "dopemux_update.cli"), attribute)
    assert isinstance(command, click.Command)
    assert command.name == name
    assert not command.hidden
    for limit in (20, 45, 60, 200):
        assert cli.short_help(name, limit) == command.get_short_help_str(limit)


def test_status_at_the_default_verbosity_imports_neither_structlog_nor_rich(
    example_copy: object,
) -> None:
    """Its console lines come from a stdlib handler; structlog (and rich, through it) are
    loaded only by commands that log more than lines (a run log, -v, --json)."""
    _, heavy = _imported_by("status", "--root", str(example_copy))
    assert not heavy & {"structlog", "rich"}
    _, heavy = _imported_by("status", "-v", "--root", str(example_copy))
    assert "structlog" in heavy


@pytest.fixture(scope="module")
def upgraded(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """``--root``/``--migrations`` of an installation with something to show: a run in its
    history (drift is checked against its files), a backup, a lock file, a hop pending."""
    root = tmp_path_factory.mktemp("upgraded") / "installation"
    shutil.copytree(EXAMPLE_INSTALLATION, root, symlinks=True)
    where = ["--root", str(root), "--migrations", str(EXAMPLE_MIGRATIONS)]
    upgrade = ["--yes", "--no-restart"]
    done = subprocess.run(
        [sys.executable, "-m", "dopemux_update", "upgrade", "--to", "0.2.0", *upgrade, *where],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    state = root / ".dopemux" / "update"
    assert (state / "lock").exists()
    assert [p for p in (state / "backups").iterdir() if not p.name.startswith(".")]
    return where


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["status"], id="status"),
        pytest.param(["status", "--json"], id="status --json"),
        pytest.param(["status", "--check"], id="status --check"),
        pytest.param(["history"], id="history"),
        pytest.param(["history", "--json"], id="history --json"),
        pytest.param(["status", "--help"], id="status --help"),
        pytest.param(["history", "--help"], id="history --help"),
    ],
)
def test_status_and_history_import_none_of_rich_pydantic_anyio_asyncio_structlog(
    upgraded: list[str], argv: list[str]
) -> None:
    """The quick, read-only commands read the state, the backups' manifests, the lock and
    the migrations folder without the libraries an update needs."""
    _, heavy = _imported_by(*argv, *upgraded)
    assert heavy == set()


def test_an_upgrade_in_a_pipe_writes_its_run_log_without_structlog_or_rich(
    example_copy: Path,
) -> None:
    """structlog (and rich, which its console brings) cost an upgrade about a tenth of
    its time; at the default verbosity in a pipe neither is needed."""
    where = ["--root", str(example_copy), "--migrations", str(EXAMPLE_MIGRATIONS)]
    _, heavy = _imported_by("upgrade", "--to", "0.2.0", "--yes", "--no-restart", *where)
    assert "structlog" not in heavy
    assert "rich" not in heavy
    logs = list((example_copy / ".dopemux" / "update" / "logs").glob("*-upgrade-*.jsonl"))
    events = [json.loads(line)["event"] for line in logs[0].read_text().splitlines()]
    assert "migration.started" in events
    assert "update.committed" in events


def test_status_reads_the_backups_without_the_backup_store(upgraded: list[str]) -> None:
    ours, _ = _imported_by("status", *upgraded)
    assert not ours & {
        "dopemux_update._backup._store",
        "dopemux_update._backup._manifest",
        "dopemux_update._run._runner",
        "dopemux_update._run._discovery",
    }


def test_status_reads_the_version_graph_without_the_plan_models_or_the_journal_hash(
    example_copy: Path,
) -> None:
    """Finding the pending hops needs transitions only: not the migrations', plans' and
    results' models (and their dataclasses), nor the journal's code and xxhash while there is
    no journal; and with no run recorded, nothing is checked for drift."""
    ours, _ = _imported_by("status", "--root", str(example_copy))
    assert "dopemux_update._run._planning" in ours
    assert not ours & {
        "dopemux_update._core._models",
        "dopemux_update._core._declared",
        "dopemux_update._safety._drift",  # no run recorded: nothing can have drifted
        "dopemux_update._safety._journal",  # no journal: nothing to read in one
    }
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from dopemux_update.cli import main;"
            f" main(['status', '--root', {str(example_copy)!r}]); print('xxhash' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert run.stdout.split()[-1] == "False"


def test_the_upgraded_installation_shows_a_run_a_backup_and_a_pending_hop(
    upgraded: list[str],
) -> None:
    """The installation the tests above use has what makes status do its work."""
    shown = subprocess.run(
        [sys.executable, "-m", "dopemux_update", "status", *upgraded],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Pending:           v0.2.0_to_v0.3.0" in shown
    assert "Last run:          0.1.0 → 0.2.0 applied" in shown
    assert "Backups:           1 (" in shown


def _logged(
    *, structlog_first: bool, json_logs: bool, run_log: Path | None = None
) -> tuple[list[str], list[str]]:
    """The stderr of a command's events at the default verbosity, and its run log's lines
    (timestamps blanked), rendered by structlog (which a host configured first, so the
    command line configures it in turn) or without it (nor logging) imported."""
    code = (
        ("import structlog\nstructlog.configure()\n" if structlog_first else "") + "import sys\n"
        "from pathlib import Path\n"
        "from dopemux_update.cli._common import RunLog, configure_logging\n"
        "from dopemux_update._core._log import get_logger\n"
        f"run_log = None if {str(run_log)!r} == 'None' else RunLog(Path({str(run_log)!r}))\n"
        f"configure_logging(0, json_logs={json_logs!r}, run_log=run_log)\n"
        "log = get_logger().bind(backup_id='b1')\n"
        "log.debug('quiet.detail', n=1)\n"
        "log.info('not.shown', path='x')\n"
        "if run_log is not None:\n"
        "    run_log.start()\n"
        "log.warning('backup.skipped', path='a \"b\"\\n', size=3, where=Path('/x'),"
        " traceback='Traceback ...', level='mine')\n"
        "log.warning('migration.output', line='told by the progress already')\n"
        "log.error('state.write_failed', error='é')\n"
        "log.critical('bare')\n"
        "if run_log is not None:\n"
        "    run_log.close()\n"
        f"assert ('structlog' in sys.modules) is {structlog_first!r}\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    logged = run_log.read_text().splitlines() if run_log is not None else []
    return [
        [re.sub(r'"timestamp": "[^"]+"', '"timestamp": "T"', line) for line in lines]
        for lines in (run.stderr.splitlines(), logged)
    ]


def _console_lines(*, structlog_first: bool, json_logs: bool) -> list[str]:
    return _logged(structlog_first=structlog_first, json_logs=json_logs)[0]


@pytest.mark.parametrize("json_logs", [False, True], ids=["lines", "json"])
def test_console_lines_without_structlog_are_the_ones_structlog_writes(json_logs: bool) -> None:
    """``status`` (and ``--json``) imports neither structlog nor logging for its console,
    yet a warning there is the same line as when structlog renders it."""
    light = _console_lines(structlog_first=False, json_logs=json_logs)
    assert len(light) == (4 if json_logs else 3)
    assert light == _console_lines(structlog_first=True, json_logs=json_logs)


@pytest.mark.parametrize("json_logs", [False, True], ids=["lines", "json"])
def test_a_run_log_without_structlog_is_the_one_structlog_writes(
    json_logs: bool, tmp_path: Path
) -> None:
    """``upgrade`` at the default verbosity writes its run log and console without
    structlog; every event (debug ones too, held until the log starts) is the same line."""
    light = _logged(structlog_first=False, json_logs=json_logs, run_log=tmp_path / "light.jsonl")
    full = _logged(structlog_first=True, json_logs=json_logs, run_log=tmp_path / "full.jsonl")
    console, logged = light
    assert len(logged) == 6
    assert "traceback_in" in "".join(console)
    assert str(tmp_path / "light.jsonl") in "".join(console)
    assert [line.replace("light.jsonl", "full.jsonl") for line in console] == full[0]
    assert logged == full[1]


def test_status_imports_no_logging_when_nothing_is_logged(upgraded: list[str]) -> None:
    code = (
        "import sys\n"
        "from dopemux_update.cli import main\n"
        f"assert main(['status', *{upgraded!r}]) == 0\n"
        "assert 'logging' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)


def test_an_unchanged_backup_and_a_restore_import_only_what_they_use(example_copy: Path) -> None:
    """A backup that copies nothing, and a restore, start as fast as they can: no thread
    pool, no logging (nobody set it up), no shutil, no heavy library (issue 16). A first
    backup, which copies, imports no heavy library either (anyio among them)."""
    where = ["--json", "--root", str(example_copy)]
    printed, loaded = _loaded_by("backups", "create", *where)
    assert json.loads(printed)["backup"]["copied_bytes"] > 0
    assert loaded & set(HEAVY) == set()
    printed, loaded = _loaded_by("backups", "create", *where)
    backup_id = json.loads(printed)["backup"]["id"]
    assert json.loads(printed)["backup"]["copied_bytes"] == 0
    unwanted = {"concurrent.futures", "queue", "logging", "shutil", "secrets", "base64", *HEAVY}
    assert loaded & unwanted == set()
    (example_copy / ".env").write_text("CHANGED=1\n")
    printed, loaded = _loaded_by("backups", "restore", backup_id, "--yes", *where)
    assert json.loads(printed)["written"] == [".env"]
    assert loaded & unwanted == set()


# -- what status reads without the store, and without pydantic ---------------------------------


def _sign(backups: Path, backup_id: str, raw: bytes) -> None:
    """Write ``raw`` as the backup's manifest with a matching checksum and MAC."""
    folder = backups / backup_id
    (folder / _manifest.MANIFEST).write_bytes(raw)
    (folder / _manifest.MANIFEST_SUM).write_text(xxhash.xxh3_128_hexdigest(raw))
    (folder / _manifest.MANIFEST_MAC).write_bytes(_manifest.sign_manifest(backups, raw))


def test_status_reads_a_manifests_head_even_where_its_root_names_entries(tmp_path: Path) -> None:
    """``status`` parses a manifest up to its entries (written last); a root whose name holds
    ``"entries":`` (escaped in the JSON) does not mislead it."""
    root = tmp_path / '"entries":{"x"' / "install"
    root.mkdir(parents=True)
    (root / "a.txt").write_text("a" * 1000)
    state = root / ".dopemux" / "update"
    store = BackupStore(state / "backups")
    info = store.create(Scope.for_installation(root, state_dir=state))
    assert info.copied_bytes == 1000
    assert _listing.copied_bytes(store.backups_dir, info.id) == 1000
    raw = (info.path / _manifest.MANIFEST).read_bytes()
    whole = json.loads(raw)
    assert '"entries":' in whole["root"]
    assert json.loads(_listing._head(raw)) == {k: v for k, v in whole.items() if k != "entries"}


def test_status_counts_and_names_the_backups_as_the_store_reads_them(example_copy: Path) -> None:
    """Whole manifests are summed up without the store; every other kind (damaged, without
    a MAC, of the older format 2, of an unknown format) is judged as the store judges it."""
    where = ["--root", str(example_copy), "--migrations", str(EXAMPLE_MIGRATIONS)]
    assert [cli.main(["backups", "create", "-q", *where]) for _ in range(6)] == [0] * 6
    backups = example_copy / ".dopemux" / "update" / "backups"
    ids = BackupStore(backups).ids()
    manifest = [backups / backup_id / _manifest.MANIFEST for backup_id in ids]
    manifest[1].write_bytes(manifest[1].read_bytes() + b" ")  # fails its checksum
    (backups / ids[2] / _manifest.MANIFEST_MAC).unlink()  # not authenticated
    older = named(manifest[3].read_bytes())  # format 2: a checksum and no MAC
    older["format"] = 2
    _sign(backups, ids[3], encoded(older, rows=False))
    (backups / ids[3] / _manifest.MANIFEST_MAC).unlink()
    newer = json.loads(manifest[4].read_bytes())
    newer["format"] = 99
    _sign(backups, ids[4], json.dumps(newer).encode())
    store = BackupStore(backups)
    expected = read_backups(store)
    assert [type(found).__name__ for found in expected] == [
        "BackupInfo",
        "DamagedBackup",
        "DamagedBackup",
        "BackupInfo",
        "DamagedBackup",
        "BackupInfo",
    ]
    copied, damaged = _status._backups(backups)
    assert copied == [b.copied_bytes for b in expected if isinstance(b, BackupInfo)]
    assert damaged == [(b.id, b.error) for b in expected if isinstance(b, DamagedBackup)]
    assert _listing.backup_ids(backups) == ids
    assert [_listing.copied_bytes(backups, i) is not None for i in ids] == [
        True,
        False,
        False,
        False,  # the store reads it
        False,
        True,
    ]


class _OldMigrationRecord(BaseModel):
    """The pydantic models state.json was read with before: the oracle."""

    model_config = ConfigDict(frozen=True)
    id: str
    direction: str
    checksum: str
    seconds: float
    outcome: str


class _OldRunRecord(BaseModel):
    model_config = ConfigDict(frozen=True)
    run_id: str | None = None
    started_at: str
    finished_at: str
    version_from: str
    version_to: str
    direction: str
    outcome: str
    backup_id: str | None = None
    migrations: tuple[_OldMigrationRecord, ...] = ()
    error: str | None = None
    command: str | None = None
    reverts: str | None = None
    reason: str | None = None


class _OldState(BaseModel):
    model_config = ConfigDict(frozen=True)
    installed_version: str | None = None
    history: tuple[_OldRunRecord, ...] = ()
    restarts_owed: tuple[str, ...] = ()


def _run(seconds: str, extra: str = "") -> str:
    """A recorded run as state.json holds it, its migration taking ``seconds``."""
    return (
        '{"run_id": "r1", "started_at": "2026-01-01T00:00:00.000Z", "finished_at": "2026-01-01'
        'T00:00:01.500Z", "version_from": "1.0", "version_to": "1.1", "direction": "upgrade",'
        ' "outcome": "applied", "backup_id": null, "migrations": [{"id": "v1.0_to_v1.1/1_a",'
        f' "direction": "upgrade", "checksum": "ab", "seconds": {seconds}, "outcome": "applied"}}],'
        f' "error": "l\\u00e9ve\\n", "command": "upgrade", "reverts": null, "reason": null{extra}}}'
    )


_EXTRA, _TEXT_NUMBER, _WORD = ', "extra": 1', '"1.5"', '"fast"'
STATE_FILES = [
    f'{{"installed_version": "1.1", "history": [{_run("0.25")}], "restarts_owed": ["web"]}}',
    f'{{"history": [{_run("3", _EXTRA)}, {_run("1e-7")}]}}',
    f'{{"history": [{_run(_TEXT_NUMBER)}]}}',  # lenient: a number as a string
    f'{{"history": [{_run("true")}]}}',
    f'{{"history": [{_run("NaN")}]}}',
    f'{{"history": [{_run("1e400")}]}}',
    f'{{"history": [{_run("1" + "0" * 400)}]}}',
    f'{{"history": [{_run(_WORD)}]}}',
    '{"installed_version": "1.0", "installed_version": "2.0"}',
    '{"installed_version": "\\ud800"}',
    '{"restarts_owed": ["caf\u00e9"]}',
    '{"restarts_owed": ["a\\u001bb", "\\ud83d\\ude00", "\\\\ud800"]}',
    '{"installed_version": 1.0}',
    '{"history": [{"run_id": "r"}]}',
    '{"history": {}}',
    '{"restarts_owed": "web"}',
    '{"restarts_owed": [1]}',
    '{"installed_version": "1.0", "hist',
    "[]",
    "null",
    "",
    "\ufeff{}",
    "[" * 100_000,
]


@pytest.mark.parametrize("text", STATE_FILES, ids=range(len(STATE_FILES)))
def test_state_json_is_read_as_the_pydantic_models_read_it(tmp_path: Path, text: str) -> None:
    """The same values, or the same error (pydantic names a dataclass, not a model, where
    a record is not an object at all)."""
    (tmp_path / "state.json").write_text(text, encoding="utf-8")
    try:
        old: object = _OldState.model_validate_json(text.encode()).model_dump(mode="json")
    except ValidationError as exc:
        old = str(exc).replace("_OldState", "State")
    try:
        new: object = json.loads(json.dumps(dataclasses.asdict(StateStore(tmp_path).read())))
    except StateError as exc:
        new = str(exc).partition(": is not a valid state file: ")[2]
        new = new.replace("dataclass_type", "model_type")
    assert repr(new) == repr(old)  # NaN equals itself as text


def test_state_json_is_written_as_the_pydantic_models_wrote_it(tmp_path: Path) -> None:
    text = STATE_FILES[0]
    (tmp_path / "state.json").write_text(text, encoding="utf-8")
    store = StateStore(tmp_path)
    store.write(store.read())
    old = _OldState.model_validate_json(text).model_dump_json(indent=2) + "\n"
    assert (tmp_path / "state.json").read_text(encoding="utf-8") == old
