"""Upgrade a copy of the sample installation from 0.1.0 to 0.3.0 and show what changed.

    python examples/walkthrough.py [FOLDER]

The copy goes to FOLDER (default: a new temporary folder, named at the start and the end); the
sample itself is never touched. Runs the real ``dopemux-update`` command line: status, plan,
verify (a rehearsal on a sandbox copy); then an upgrade that fails on purpose (a copy of the
example migrations plus one that refuses), rolled back and verified identical; then the real
upgrade, and the diff.
"""

from __future__ import annotations

import difflib
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from contextlib import closing
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAMPLE = HERE / "installation"
MIGRATIONS = HERE.parent / "migrations" / "examples"
TEXT_FILES = ("config/mcp/broker.yaml", "docker-compose.yml", ".env", "config/app.yaml")


def run(*args: str) -> int:
    command = [sys.executable, "-m", "dopemux_update", *args]
    print(f"\n$ dopemux-update {' '.join(args)}", flush=True)
    return subprocess.run(command, check=False).returncode


def schema(db: Path) -> list[str]:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        rows = conn.execute(
            "SELECT sql FROM sqlite_master WHERE tbl_name IN ('decisions', 'pal_threads')"
            " AND sql IS NOT NULL"
        )
        return [line + "\n" for (sql,) in rows for line in sql.splitlines()]


def main() -> int:
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()) / "installation"
    if target.exists():
        print(f"{target} already exists; pass a new folder", file=sys.stderr)
        return 2
    shutil.copytree(SAMPLE, target, symlinks=True)
    before = {name: (target / name).read_text().splitlines(keepends=True) for name in TEXT_FILES}
    before_schema = schema(target / ".dopemux/conport.db")
    print(f"Copied the sample installation to {target} (this walkthrough works on that copy)")

    common = ["--root", str(target), "--migrations", str(MIGRATIONS)]
    run("status", *common)
    run("plan", *common)
    code = run("verify", *common)  # a rehearsal on a sandbox copy: forward, back, forward
    if code != 0:
        print(f"\nverify exited with {code}", file=sys.stderr)
        return code
    code = failing_upgrade(target, before, before_schema)
    if code != 0:
        return code
    code = run("upgrade", *common, "--yes", "--no-restart")
    if code != 0:
        print(f"\nupgrade exited with {code}", file=sys.stderr)
        return code

    print("\nWhat the upgrade changed:")
    for name, old in before.items():
        new = (target / name).read_text().splitlines(keepends=True)
        diff = list(difflib.unified_diff(old, new, f"a/{name}", f"b/{name}"))
        print("".join(diff) if diff else f"  {name}: unchanged (user comments and all)\n")
    diff = difflib.unified_diff(
        before_schema, schema(target / ".dopemux/conport.db"), "a/conport.db", "b/conport.db"
    )
    print("".join(diff))
    run("status", *common)
    print(f"\nThe upgraded copy of the sample is in {target}")
    return 0


FAILING = """\
def migrate_forward(project_root):
    print("the broker config has no 'pal' section yet: refusing, on purpose")
    return False


def migrate_backward(project_root):
    return True


MIGRATION_INFO = {
    "version_from": "0.2.0",
    "version_to": "0.3.0",
    "description": "Fails on purpose, after every other migration has run",
    "breaking_changes": False,
    "estimated_duration_seconds": 1,
    "requires_restart": [],
    "backup_required": True,
}
"""


def failing_upgrade(target: Path, before: dict[str, list[str]], before_schema: list[str]) -> int:
    """An upgrade whose last migration fails: everything is rolled back, verified identical."""
    broken = Path(tempfile.mkdtemp()) / "migrations"
    shutil.copytree(MIGRATIONS, broken)
    (broken / "v0.2.0_to_v0.3.0" / "999_fails_on_purpose.py").write_text(FAILING)
    print(f"\nNow an upgrade that fails: {broken} is the example migrations plus one that fails.")
    code = run("upgrade", "--root", str(target), "--migrations", str(broken), "--no-restart")
    shutil.rmtree(broken.parent)
    if code != 1:
        print(f"\nthe failing upgrade exited with {code}, not 1", file=sys.stderr)
        return code or 1
    same = (
        all(
            (target / name).read_text().splitlines(keepends=True) == old
            for name, old in before.items()
        )
        and schema(target / ".dopemux/conport.db") == before_schema
    )
    print(
        "\nChecked again by this script: the text files and the database schema are"
        + (" exactly as before the failed upgrade." if same else " NOT as before!")
    )
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
