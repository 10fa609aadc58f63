"""1,000 no-op migrations up and down: ``dopemux-update`` against Alembic, in the same run.

Both tools are timed the same way: the whole command as a subprocess, started by its
installed script beside this interpreter (``dopemux-update``, ``alembic``; ``python -m`` where
there is none), wall clock, interpreter start-up included. Everything that is
generated (migration files, Alembic scripts, installations, databases) is made outside the timed
region. See ``bench/README.md``.

Run from the repository root::

    .venv/bin/python bench/bench_noop.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _commands

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_MISSING_ALEMBIC = 2

TARGET_RATIO = 0.15  # issue 16
OUT_DIR = Path(__file__).resolve().parent / "out"

MEASUREMENTS = ("ours_upgrade", "ours_downgrade", "alembic_upgrade", "alembic_downgrade")

OUR_MIGRATION = '''"""Migration: v{v_from} to v{v_to} - no-op {n}"""
from pathlib import Path

def migrate_forward(project_root: Path) -> bool:
    return True

def migrate_backward(project_root: Path) -> bool:
    return True

MIGRATION_INFO = {{
    "version_from": "{v_from}",
    "version_to": "{v_to}",
    "description": "no-op {n}",
    "breaking_changes": False,
    "estimated_duration_seconds": 0,
    "requires_restart": [],
}}
'''

# What `alembic init` (generic template) would give, trimmed to the online mode used here.
ALEMBIC_INI = """\
[alembic]
script_location = %(here)s/alembic
path_separator = os
sqlalchemy.url = sqlite:///%(here)s/bench.db

[loggers]
keys = root,sqlalchemy,alembic

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARNING
handlers = console
qualname =

[logger_sqlalchemy]
level = WARNING
handlers =
qualname = sqlalchemy.engine

[logger_alembic]
level = INFO
handlers =
qualname = alembic

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %%(levelname)-5.5s [%%(name)s] %%(message)s
datefmt = %%H:%%M:%%S
"""

ALEMBIC_ENV = """\
from logging.config import fileConfig

from sqlalchemy import engine_from_config, pool

from alembic import context

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)


def run_migrations_online() -> None:
    connectable = engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=None)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
"""

ALEMBIC_REVISION = '''\
"""no-op {n}

Revision ID: {revision}
Revises: {down_repr}
Create Date: 2024-01-01 00:00:00.000000

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "{revision}"
down_revision: str | None = {down_repr}
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
'''


class BenchError(Exception):
    """A benchmarked command failed or did not do what it should have."""

    def __init__(self, message: str, *, stderr: str = "") -> None:
        super().__init__(message)
        self.stderr = stderr


@dataclass(frozen=True)
class Layout:
    """Where everything lives inside the benchmark's temporary folder."""

    work: Path
    hops: int
    per_hop: int
    bytecode: bool = True

    @property
    def child_env(self) -> dict[str, str]:
        """Both tools get the same environment; only the bytecode cache setting differs."""
        env = dict(os.environ)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        if not self.bytecode:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        return env

    @property
    def count(self) -> int:
        return self.hops * self.per_hop

    @property
    def migrations(self) -> Path:
        return self.work / "ours" / "migrations"

    @property
    def installation(self) -> Path:
        return self.work / "ours" / "installation"

    @property
    def alembic_dir(self) -> Path:
        return self.work / "alembic"

    @property
    def alembic_ini(self) -> Path:
        return self.alembic_dir / "alembic.ini"

    @property
    def alembic_db(self) -> Path:
        return self.alembic_dir / "bench.db"

    @property
    def newest(self) -> str:
        return f"0.{self.hops}.0"


@dataclass
class Results:
    """Raw timings (seconds) of every measurement, in the order they were taken."""

    timings: dict[str, list[float]] = field(
        default_factory=lambda: {name: [] for name in MEASUREMENTS}
    )


# -- generation (never timed) ---------------------------------------------------------------


def revision_id(index: int) -> str:
    return f"{index:04d}n00p0000"


def generate_ours(layout: Layout) -> None:
    """Write ``hops`` folders ``v0.i.0_to_v0.{i+1}.0`` of ``per_hop`` no-op migrations each."""
    for i in range(layout.hops):
        v_from, v_to = f"0.{i}.0", f"0.{i + 1}.0"
        folder = layout.migrations / f"v{v_from}_to_v{v_to}"
        folder.mkdir(parents=True)
        for n in range(1, layout.per_hop + 1):
            text = OUR_MIGRATION.format(v_from=v_from, v_to=v_to, n=n)
            (folder / f"{n:03d}_noop.py").write_text(text, encoding="utf-8")


def generate_alembic(layout: Layout) -> None:
    """Write an Alembic environment for SQLite with ``count`` chained no-op revisions."""
    scripts = layout.alembic_dir / "alembic"
    versions = scripts / "versions"
    versions.mkdir(parents=True)
    layout.alembic_ini.write_text(ALEMBIC_INI, encoding="utf-8")
    (scripts / "env.py").write_text(ALEMBIC_ENV, encoding="utf-8")
    for index in range(1, layout.count + 1):
        revision = revision_id(index)
        down_repr = repr(revision_id(index - 1)) if index > 1 else "None"
        text = ALEMBIC_REVISION.format(n=index, revision=revision, down_repr=down_repr)
        (versions / f"{revision}_noop_{index}.py").write_text(text, encoding="utf-8")


def fresh_installation(layout: Layout) -> None:
    """A small installation at 0.0.0: a couple of files and the recorded version."""
    shutil.rmtree(layout.installation, ignore_errors=True)
    config = layout.installation / "config"
    config.mkdir(parents=True)
    (config / "app.yaml").write_text("name: dopemux\nport: 8080\nworkers: 2\n", encoding="utf-8")
    (layout.installation / "README.txt").write_text("A benchmark installation.\n")
    run(
        ours_command("stamp", "0.0.0", "--root", str(layout.installation)),
        cwd=layout.work,
        env=layout.child_env,
    )


def fresh_database(layout: Layout) -> None:
    layout.alembic_db.unlink(missing_ok=True)


# -- running and checking -------------------------------------------------------------------


def ours_command(*args: str) -> list[str]:
    return [*_commands.dopemux_update(), *args]


def alembic_command(layout: Layout, *args: str) -> list[str]:
    return [*_commands.alembic(), "-c", str(layout.alembic_ini), *args]


def run(
    command: Sequence[str], *, cwd: Path, env: dict[str, str]
) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run ``command``; return its wall-clock seconds and the finished process.

    Raises :class:`BenchError` (with the command's stderr) if it does not exit 0.
    """
    start = time.perf_counter()
    process = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if process.returncode != 0:
        raise BenchError(
            f"`{' '.join(command)}` exited with {process.returncode}", stderr=process.stderr
        )
    return elapsed, process


def ours_update(layout: Layout, direction: str) -> float:
    """Time one ``dopemux-update upgrade`` or ``downgrade --to 0.0.0`` over all migrations."""
    target = ["--to", "0.0.0"] if direction == "downgrade" else []
    expected_version = "0.0.0" if direction == "downgrade" else layout.newest
    command = ours_command(
        direction,
        *target,
        "--root",
        str(layout.installation),
        "--migrations",
        str(layout.migrations),
        "--yes",
        "--no-restart",
        "--json",
    )
    elapsed, process = run(command, cwd=layout.work, env=layout.child_env)
    try:
        payload: dict[str, Any] = json.loads(process.stdout)
    except ValueError as exc:
        raise BenchError(
            f"dopemux-update {direction} did not print one JSON object: {exc}",
            stderr=process.stderr,
        ) from exc
    applied = payload.get("applied") or []
    if payload.get("ok") is not True or len(applied) != layout.count:
        raise BenchError(
            f"dopemux-update {direction}: ok={payload.get('ok')!r}, applied {len(applied)}"
            f" of {layout.count} migrations (error: {payload.get('error')!r})",
            stderr=process.stderr,
        )
    installed = payload.get("installed_version", expected_version)
    if installed != expected_version:
        raise BenchError(
            f"dopemux-update {direction}: installed version is {installed!r},"
            f" expected {expected_version}",
            stderr=process.stderr,
        )
    return elapsed


def alembic_versions(layout: Layout) -> list[str]:
    with sqlite3.connect(layout.alembic_db) as connection:
        rows = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    return [row[0] for row in rows]


def alembic_update(layout: Layout, direction: str) -> float:
    """Time one ``alembic upgrade head`` or ``alembic downgrade base``."""
    target = "base" if direction == "downgrade" else "head"
    elapsed, process = run(
        alembic_command(layout, direction, target), cwd=layout.alembic_dir, env=layout.child_env
    )
    expected = [] if direction == "downgrade" else [revision_id(layout.count)]
    try:
        found = alembic_versions(layout)
    except sqlite3.Error as exc:
        raise BenchError(
            f"alembic {direction} {target}: cannot read alembic_version: {exc}",
            stderr=process.stderr,
        ) from exc
    if found != expected:
        raise BenchError(
            f"alembic {direction} {target}: alembic_version holds {found}, expected {expected}",
            stderr=process.stderr,
        )
    return elapsed


def repetition(layout: Layout, results: Results | None) -> None:
    """One full round: ours up and down on a fresh installation, Alembic on a fresh database."""
    fresh_installation(layout)
    up = ours_update(layout, "upgrade")
    down = ours_update(layout, "downgrade")
    fresh_database(layout)
    alembic_up = alembic_update(layout, "upgrade")
    alembic_down = alembic_update(layout, "downgrade")
    if results is not None:
        for name, seconds in zip(MEASUREMENTS, (up, down, alembic_up, alembic_down), strict=True):
            results.timings[name].append(seconds)


# -- reporting ------------------------------------------------------------------------------


def summarize(results: Results) -> dict[str, Any]:
    summary: dict[str, Any] = {
        name: {"median": statistics.median(values), "min": min(values)}
        for name, values in results.timings.items()
    }
    ratios = {}
    for direction in ("upgrade", "downgrade"):
        ours, theirs = summary[f"ours_{direction}"], summary[f"alembic_{direction}"]
        ratios[direction] = {
            "median": ours["median"] / theirs["median"],
            "min": ours["min"] / theirs["min"],
        }
    return {"summary": summary, "ratios": ratios}


def print_table(layout: Layout, results: Results, report: dict[str, Any]) -> None:
    repeat = len(results.timings[MEASUREMENTS[0]])
    print()
    cache = "bytecode cached" if layout.bytecode else "no bytecode cache"
    print(
        f"{layout.count} no-op migrations ({layout.hops} hops x {layout.per_hop}),"
        f" {repeat} runs, {cache}"
    )
    print(f"{'measurement':<22}{'median (s)':>12}{'min (s)':>12}   runs (s)")
    for name in MEASUREMENTS:
        stats = report["summary"][name]
        runs = " ".join(f"{value:.3f}" for value in results.timings[name])
        label = name.replace("_", " ")
        print(f"{label:<22}{stats['median']:>12.3f}{stats['min']:>12.3f}   {runs}")
    print()
    print(f"{'ours / alembic':<22}{'median':>12}{'min':>12}   target")
    for direction, ratio in report["ratios"].items():
        verdict = "met" if ratio["median"] <= TARGET_RATIO else "NOT met"
        print(
            f"{direction:<22}{ratio['median']:>12.3f}{ratio['min']:>12.3f}"
            f"   <= {TARGET_RATIO} ({verdict})"
        )


def environment() -> dict[str, Any]:
    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "python": sys.version,
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "dopemux_update": version("dopemux-update"),
        "alembic": version("alembic"),
        "sqlalchemy": version("sqlalchemy"),
    }


def write_json(layout: Layout, results: Results, report: dict[str, Any], warmup: int) -> None:
    out_file = OUT_DIR / ("noop.json" if layout.bytecode else "noop-no-bytecode.json")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "noop",
        "migrations": layout.count,
        "hops": layout.hops,
        "per_hop": layout.per_hop,
        "bytecode_cache": layout.bytecode,
        "repeat": len(results.timings[MEASUREMENTS[0]]),
        "warmup": warmup,
        "target_ratio": TARGET_RATIO,
        "timings_seconds": results.timings,
        **report,
        "environment": environment(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out_file.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"\nWrote {out_file}")


# -- entry point ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds (default: 3)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed rounds first, to warm caches and write Alembic's bytecode (default: 1)",
    )
    parser.add_argument("--hops", type=int, default=100, help="version hops (default: 100)")
    parser.add_argument("--per-hop", type=int, default=10, help="migrations a hop (default: 10)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--no-bytecode",
        dest="bytecode",
        action="store_false",
        help="run both tools with PYTHONDONTWRITEBYTECODE=1, so every run compiles every"
        " migration file (default: Python's default, a __pycache__ beside each file)",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.warmup < 0 or args.hops < 1 or args.per_hop < 1:
        parser.error("--repeat, --hops and --per-hop must be >= 1, --warmup >= 0")
    return args


def benchmark(layout: Layout, repeat: int, warmup: int) -> Results:
    print(f"Generating {layout.count} migrations for each tool in {layout.work} ...")
    generate_ours(layout)
    generate_alembic(layout)
    for index in range(warmup):
        print(f"warm-up {index + 1}/{warmup} ...", flush=True)
        repetition(layout, None)
    results = Results()
    for index in range(repeat):
        print(f"run {index + 1}/{repeat} ...", flush=True)
        repetition(layout, results)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if importlib.util.find_spec("alembic") is None:
        print(
            "Alembic is not installed in this environment; it is the baseline of this benchmark."
            "\nInstall it with:  pip install -e '.[bench]'",
            file=sys.stderr,
        )
        return EXIT_MISSING_ALEMBIC
    work = Path(tempfile.mkdtemp(prefix="dopemux-bench-noop-"))
    layout = Layout(work=work, hops=args.hops, per_hop=args.per_hop, bytecode=args.bytecode)
    try:
        results = benchmark(layout, args.repeat, args.warmup)
    except BenchError as exc:
        print(f"\nFAILED: {exc}", file=sys.stderr)
        if exc.stderr:
            print("--- stderr of the command ---", file=sys.stderr)
            print(exc.stderr.rstrip(), file=sys.stderr)
        return EXIT_FAILED
    finally:
        if args.keep:
            print(f"Kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report = summarize(results)
    print_table(layout, results, report)
    write_json(layout, results, report, args.warmup)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
