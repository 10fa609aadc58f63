"""Random kill -9 and recover: an upgrade, a failing upgrade or a ``backups restore`` is
killed at a random crash point, then ``recover`` (itself killed now and then, and run again)
must leave the tree exactly as before or exactly as after, with the version to match.

Seeded: ``DOPEMUX_UPDATE_KILL_SEED=N`` replays a run; the seed is in every failure message.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import MigrationWriter, tree_digest

MIN_KILLS = 50
MAX_ITERATIONS = 160
WORKERS = 2

UPGRADE_POINTS = [
    ("backup.file", 5),
    ("backup.before_rename", 1),
    ("journal.run_started", 1),
    ("journal.step_begun", 3),
    ("journal.step_done", 3),
    ("runner.call_returned", 3),
    ("journal.committed", 1),
    ("commit.state_written", 1),
]
ROLLBACK_POINTS = [
    ("journal.rollback_started", 1),
    ("journal.rollback_step", 2),
    ("rollback.step", 2),
    ("restore.file", 4),
    ("journal.needs_recovery", 1),
    *UPGRADE_POINTS[:6],
]
RESTORE_POINTS = [
    ("journal.restore_started", 1),
    ("restore.file", 4),
    ("restore.before_record", 1),
]
RECOVER_POINTS = [
    ("recovery.restored", 1),
    ("recovery.before_clear", 1),
    ("restore.file", 3),
    ("restore.before_record", 1),
]


def cli(*args: str, crash: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ}
    env.pop("DOPEMUX_UPDATE_CRASH_AT", None)
    if crash is not None:
        env["DOPEMUX_UPDATE_CRASH_AT"] = crash
    return subprocess.run(
        [sys.executable, "-m", "dopemux_update", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )


def installed(root: Path) -> str | None:
    state = json.loads((root / ".dopemux" / "update" / "state.json").read_text())
    return state["installed_version"]  # type: ignore[no-any-return]


def pick(rng: random.Random, points: list[tuple[str, int]]) -> str:
    name, most = rng.choice(points)
    return f"{name}:{rng.randint(1, most)}"


@dataclass
class World:
    template: Path
    ok_migrations: Path
    failing_migrations: Path
    pre: dict[str, Any]
    post: dict[str, Any]
    work: Path


def make_world(base: Path) -> World:
    template = base / "template"
    (template / "config").mkdir(parents=True)
    (template / "config" / "app.yaml").write_text("log_level: info\n")
    (template / "config" / "old.yaml").write_text("old: true\n")
    (template / "data").mkdir()
    for i in range(3):
        (template / "data" / f"f{i}.txt").write_text(f"file {i}\n")
    ok = MigrationWriter(base / "ok", base / "calls-ok.log")
    for writer in (ok, MigrationWriter(base / "failing", base / "calls-failing.log")):
        writer.add(
            "v1.0_to_v1.1",
            "1_config.py",
            forward=(
                "(project_root / 'config' / 'app.yaml').write_text('log_level: debug\\n')\n"
                "(project_root / 'config' / 'old.yaml').unlink()\n"
                "(project_root / 'config' / 'new.yaml').write_text('new: true\\n')\n"
                "return True"
            ),
            backward=(
                "(project_root / 'config' / 'app.yaml').write_text('log_level: info\\n')\n"
                "(project_root / 'config' / 'old.yaml').write_text('old: true\\n')\n"
                "(project_root / 'config' / 'new.yaml').unlink(missing_ok=True)\n"
                "return True"
            ),
        )
        writer.add(
            "v1.0_to_v1.1",
            "2_data.py",
            forward=(
                "for i in range(3):\n"
                "    p = project_root / 'data' / f'f{i}.txt'\n"
                "    p.write_text(p.read_text().upper())\n"
                "return True"
            ),
            backward=(
                "for i in range(3):\n"
                "    p = project_root / 'data' / f'f{i}.txt'\n"
                "    p.write_text(p.read_text().lower())\n"
                "return True"
            ),
        )
    MigrationWriter(base / "failing", base / "calls-failing.log").add(
        "v1.0_to_v1.1",
        "3_fails.py",
        forward=(
            "for i in range(3):\n"
            "    (project_root / 'data' / f'f{i}.txt').write_text('partial')\n"
            "return False"
        ),
    )
    assert cli("stamp", "1.0", "--root", str(template)).returncode == 0
    pre = tree_digest(template)
    clean = base / "clean"
    shutil.copytree(template, clean, symlinks=True)
    done = cli("upgrade", "--root", str(clean), "--migrations", str(ok.root), "--no-restart")
    assert done.returncode == 0, done.stderr
    post = tree_digest(clean)
    assert post != pre
    work = base / "work"
    work.mkdir()
    return World(template, ok.root, base / "failing", pre, post, work)


@dataclass
class Outcome:
    kills: int
    story: str


def one_iteration(world: World, seed: int, index: int) -> Outcome:
    rng = random.Random(f"{seed}-{index}")  # noqa: S311 - a test schedule, not a secret
    root = world.work / f"run-{index}"
    shutil.copytree(world.template, root, symlinks=True)
    kills = 0
    scenario = rng.choice(["upgrade", "failing upgrade", "backups restore"])
    story = [f"seed={seed} iteration={index} scenario={scenario}"]
    if scenario == "backups restore":
        created = cli("backups", "create", "--root", str(root), "--json")
        assert created.returncode == 0, created.stderr
        backup_id = json.loads(created.stdout)["backup"]["id"]
        for name in ("config/app.yaml", "data/f0.txt", "data/f2.txt"):
            (root / name).write_text("changed since the backup\n")
        (root / "data" / "added.txt").write_text("added\n")
        before, after = tree_digest(root), world.pre
        versions = {"before": "1.0", "after": "1.0"}
        point = pick(rng, RESTORE_POINTS)
        done = cli("backups", "restore", backup_id, "--yes", "--root", str(root), crash=point)
    else:
        before, after = world.pre, world.post
        versions = {"before": "1.0", "after": "1.1"}
        failing = scenario == "failing upgrade"
        migrations = world.failing_migrations if failing else world.ok_migrations
        point = pick(rng, ROLLBACK_POINTS if failing else UPGRADE_POINTS)
        args = ["--root", str(root), "--migrations", str(migrations), "--no-restart"]
        done = cli("upgrade", *args, crash=point)
        if failing:  # a failing plan never commits
            after, versions = before, {"before": "1.0", "after": "1.0"}
    story.append(f"{scenario} at {point}: exit {done.returncode}")
    kills += done.returncode == -signal.SIGKILL
    assert done.returncode in (-signal.SIGKILL, 0, 1), "\n".join([*story, done.stderr])

    if rng.random() < 0.7:
        point = pick(rng, RECOVER_POINTS)
        first = cli("recover", "--root", str(root), crash=point)
        story.append(f"recover at {point}: exit {first.returncode}")
        kills += first.returncode == -signal.SIGKILL
        assert first.returncode in (-signal.SIGKILL, 0), "\n".join([*story, first.stderr])
    final = cli("recover", "--root", str(root), "--json")
    story.append(f"recover: exit {final.returncode} {final.stdout.strip()[:200]}")
    assert final.returncode == 0, "\n".join([*story, final.stderr])

    found = tree_digest(root)
    version = installed(root)
    message = "\n".join(story)
    side = "before" if found == before else "after"
    assert found == (before if side == "before" else after), (
        f"{message}\nthe tree is neither exactly the state before nor the one after"
    )
    assert version == versions[side], f"{message}\nthe tree is {side}, but {version} is recorded"
    assert not (root / ".dopemux" / "update" / "journal.jsonl").exists(), message
    shutil.rmtree(root)
    return Outcome(kills, message)


def test_random_kills_anywhere_always_recover_to_exactly_before_or_after(
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get("DOPEMUX_UPDATE_KILL_SEED") or random.SystemRandom().randrange(10**9))
    world = make_world(tmp_path)
    kills = 0
    iterations = 0
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        while kills < MIN_KILLS and iterations < MAX_ITERATIONS:
            batch = [
                pool.submit(one_iteration, world, seed, iterations + i) for i in range(WORKERS * 2)
            ]
            iterations += len(batch)
            for future in batch:
                kills += future.result().kills
    seconds = time.monotonic() - started
    assert kills >= MIN_KILLS, f"seed={seed}: only {kills} kills in {iterations} iterations"
    print(f"kill loop: seed={seed}, {kills} kills in {iterations} iterations, {seconds:.1f}s")
