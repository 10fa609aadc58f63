"""Backups of a 1.1 GB installation, side by side with ``cp -a`` of the same tree.

    .venv/bin/python bench/bench_backup.py [--repeat N] [--scale F] [--keep] [--in-process]

Generates (untimed) an installation of 5,000 files of mixed sizes (about 1 GB) plus a
100 MB SQLite database in WAL mode, held open by a separate process with pages not yet
checkpointed, as a running service would. Each round then times, on the same tree:

- ``cp -a`` of the tree, and ``cp -a`` followed by ``sync`` (a backup must be durable
  before the first migration runs, so ours includes syncing its files);
- ``dopemux-update backups create`` (hashing, SQLite through its backup API, verification
  and sync included);
- a second ``backups create`` of the unchanged tree;
- ``backups restore ID --yes`` after three files were changed.

Ours runs as whole commands (``dopemux-update ... --json``, the installed script), each a
new process, so interpreter start-up and imports are counted, as an operator pays them; so
is ``cp``'s.
``sync`` runs before every timed step so that no step pays for another's writeback. With
``--in-process``, the three steps are also timed through the library in one process, around
each call (what the backup code costs without start-up). Prints CPU seconds beside the
wall-clock ones and the dearest imports of ``backups create`` (``python -X importtime``), and
writes ``bench/out/backup.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _commands

OUT = Path(__file__).resolve().parent / "out" / "backup.json"
TARGETS = {"first_backup": 1.0, "second_backup": 0.05, "restore_three_files": 0.03}

HOLDER = r"""
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA wal_autocheckpoint=0")
conn.execute("BEGIN")
for _ in range(80):
    conn.execute("INSERT INTO blobs (data) VALUES (randomblob(64000))")
conn.execute("COMMIT")
print("ready", flush=True)
sys.stdin.read()
"""


#: ``--in-process``: the same three steps through the library, timed around each call in one
#: process (no interpreter start-up or imports): what the backup code itself costs.
DRIVER = r"""
import json, sys, time, logging
from pathlib import Path
import structlog
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
from dopemux_update import BackupStore, Scope

root = Path(sys.argv[1]).resolve()
changed = [root / rel for rel in json.loads(sys.argv[2])]
state = root / ".dopemux" / "update"
store = BackupStore(state / "backups")
scope = Scope.for_installation(root, state_dir=state)
out = {}

def synced():
    import os
    os.sync()

synced()
start = time.perf_counter()
first = store.create(scope)
out["first_backup"] = time.perf_counter() - start
out["files"] = first.files
out["bytes"] = first.bytes
synced()
start = time.perf_counter()
second = store.create(scope)
out["second_backup"] = time.perf_counter() - start
out["second_copied_bytes"] = second.copied_bytes
for path in changed:
    data = bytearray(path.read_bytes())
    data[: len(b"changed")] = b"changed"
    path.write_bytes(bytes(data))
synced()
start = time.perf_counter()
report = store.restore(second.id, root)
out["restore_three_files"] = time.perf_counter() - start
out["restore_written"] = list(report.written)
print(json.dumps(out))
"""


def generate(root: Path, scale: float) -> list[str]:
    """About 1 GB in 5,000 files of mixed sizes, and a 100 MB WAL database; returns 3 paths."""
    rng = random.Random(7)
    sizes = []
    for _ in range(5000):
        r = rng.random()
        if r < 0.70:
            sizes.append(rng.randint(100, 8_000))
        elif r < 0.95:
            sizes.append(rng.randint(8_000, 200_000))
        elif r < 0.995:
            sizes.append(rng.randint(200_000, 5_000_000))
        else:
            sizes.append(rng.randint(40_000_000, 80_000_000))
    factor = 1_000_000_000 * scale / sum(sizes)
    block = os.urandom(1 << 20)
    names = []
    for index, raw_size in enumerate(sizes):
        folder = root / f"data{index % 50:02d}" / f"part{index % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        size = max(65, int(raw_size * factor))
        path = folder / f"file{index:05d}.bin"
        with path.open("wb") as handle:
            handle.write(os.urandom(64))  # every file differs
            remaining = size - 64
            while remaining > 0:
                handle.write(block[: min(remaining, len(block))])
                remaining -= len(block)
        names.append(path.relative_to(root).as_posix())
    db = root / ".dopemux" / "conport.db"
    db.parent.mkdir()
    with sqlite3.connect(db, isolation_level=None) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB)")
        conn.execute("BEGIN")
        for _ in range(int(1500 * scale)):
            conn.execute("INSERT INTO blobs (data) VALUES (randomblob(64000))")
        conn.execute("COMMIT")
    conn.close()
    return [names[i] for i in (10, 2000, 4000)]


def _cpu() -> float:
    """CPU seconds (user + system) of the children waited for so far."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def timed(command: list[str]) -> tuple[float, float]:
    """Wall-clock and CPU seconds of a command."""
    cpu, start = _cpu(), time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start, _cpu() - cpu


def ours(root: Path, *args: str) -> tuple[float, float, dict[str, Any]]:
    """Run ``dopemux-update ARGS --root ROOT --json`` as a whole process: its wall-clock and
    CPU seconds, its JSON."""
    command = [*_commands.dopemux_update(), *args, "--root", str(root), "--json"]
    cpu, start = _cpu(), time.perf_counter()
    run = subprocess.run(command, check=True, capture_output=True, text=True)
    return time.perf_counter() - start, _cpu() - cpu, json.loads(run.stdout)


def one_round(
    root: Path, work: Path, changed: list[str], *, in_process: bool = False
) -> dict[str, float]:
    """One round's wall-clock seconds of each step, and (``cpu_`` keys) CPU seconds: on a
    shared machine the CPU seconds vary less than the wall-clock ones."""
    copy = work / "copy"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.rmtree(root / ".dopemux" / "update" / "backups", ignore_errors=True)  # last round's
    os.sync()
    cp, cpu_cp = timed(["cp", "-a", str(root), str(copy)])
    shutil.rmtree(copy)
    os.sync()
    start = time.perf_counter()
    subprocess.run(["cp", "-a", str(root), str(copy)], check=True)
    os.sync()
    cp_sync = time.perf_counter() - start
    shutil.rmtree(copy)
    os.sync()
    first, cpu_first, _ = ours(root, "backups", "create")
    os.sync()
    second, cpu_second, created = ours(root, "backups", "create")
    for rel in changed:
        path = root / rel
        data = bytearray(path.read_bytes())
        data[: len(b"changed")] = b"changed"
        path.write_bytes(bytes(data))
    os.sync()
    backup_id = created["backup"]["id"]
    restore, cpu_restore, report = ours(root, "backups", "restore", backup_id, "--yes")
    if sorted(report["written"]) != sorted(changed):
        raise SystemExit(f"restore wrote {report['written']}, expected {changed}")
    library = {}
    if in_process:
        shutil.rmtree(root / ".dopemux" / "update" / "backups")
        driver = subprocess.run(
            [sys.executable, "-c", DRIVER, str(root), json.dumps(changed)],
            check=True,
            capture_output=True,
            text=True,
        )
        found = json.loads(driver.stdout)
        library = {f"in_process_{key}": found[key] for key in TARGETS}
    return {
        **library,
        "cp_a": cp,
        "cp_a_sync": cp_sync,
        "first_backup": first,
        "second_backup": second,
        "restore_three_files": restore,
        "cpu_cp_a": cpu_cp,
        "cpu_first_backup": cpu_first,
        "cpu_second_backup": cpu_second,
        "cpu_restore_three_files": cpu_restore,
    }


def importtime(root: Path) -> list[tuple[int, str]]:
    """The dearest imports of ``backups create`` (cumulative microseconds, module)."""
    command = ["backups", "create", "--root", str(root), "--json"]
    run = subprocess.run(
        [*_commands.under_python(_commands.dopemux_update(), "-X", "importtime"), *command],
        check=True,
        capture_output=True,
        text=True,
    )
    entries = []
    for line in run.stderr.splitlines():
        if line.startswith("import time:") and "self [us]" not in line:
            _, cumulative, name = line.removeprefix("import time:").split("|")
            entries.append((int(cumulative), name.rstrip()))
    return sorted(entries, reverse=True)[:12]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="size factor (default 1.0)")
    parser.add_argument("--keep", action="store_true", help="keep the generated tree")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="also time the three steps through the library in one process (no start-up)",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dopemux-bench-backup-"))
    root = work / "installation"
    print(f"Generating the installation in {root} ...", flush=True)
    changed = generate(root, args.scale)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root / ".dopemux" / "conport.db")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        holder.stdout.readline()  # the service holds the database, WAL not checkpointed
        rounds = []
        for index in range(args.repeat):
            print(f"round {index + 1}/{args.repeat} ...", flush=True)
            rounds.append(one_round(root, work, changed, in_process=args.in_process))
        top = importtime(root)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(30)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("\nDearest imports of `backups create` (python -X importtime, cumulative ms):")
    for cumulative, name in top:
        print(f"{cumulative / 1000:>9.1f}  {name}")
    medians = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    report: dict[str, Any] = {"rounds": rounds, "median_seconds": medians, "ratios": {}}
    print(f"\n{'measurement':<22}{'median (s)':>12}   runs (s)")
    for key in rounds[0]:
        runs = " ".join(f"{r[key]:.3f}" for r in rounds)
        print(f"{key:<22}{medians[key]:>12.3f}   {runs}")
    print(f"\n{'ours / baseline':<36}{'vs cp -a':>10}{'vs cp -a + sync':>17}   target")
    for key, target in TARGETS.items():
        ratio = medians[key] / medians["cp_a"]
        ratio_sync = medians[key] / medians["cp_a_sync"]
        report["ratios"][key] = {"cp_a": ratio, "cp_a_sync": ratio_sync, "target": target}
        verdict = "met" if ratio <= target else "NOT met"
        print(f"{key:<36}{ratio:>10.3f}{ratio_sync:>17.3f}   <= {target} vs cp -a ({verdict})")
    if args.in_process:
        print("\nIn one process through the library (no start-up), ours / cp -a:")
        for key in TARGETS:
            ratio = medians[f"in_process_{key}"] / medians["cp_a"]
            report["ratios"][key]["in_process_vs_cp_a"] = ratio
            print(f"{key:<36}{ratio:>10.3f}")
    print("\nCPU seconds (user + system), ours / cp -a's (steadier on a shared machine):")
    for key in TARGETS:
        cpu = medians[f"cpu_{key}"] / medians["cpu_cp_a"]
        report["ratios"][key]["cpu_vs_cp_a"] = cpu
        print(f"{key:<36}{cpu:>10.3f}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nWrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
