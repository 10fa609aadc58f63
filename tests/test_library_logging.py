"""Unconfigured, the library prints nothing; its events reach the stdlib logger, or the
host's structlog processors when the host configured structlog."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = """
import asyncio, sys
from pathlib import Path
{setup}
from dopemux_update import OrchestrationPhase

root = Path(sys.argv[1])
async def main():
    for target in ("1.1", "1.2"):
        phase = OrchestrationPhase(
            project_root=root, migrations_dir=root.parent / "migrations",
            current_version="1.0" if target == "1.1" else "1.1", target_version=target,
        )
        result = await phase.execute()
        assert bool(result) is (target == "1.1"), result
asyncio.run(main())
"""


def _installation(tmp_path: Path) -> Path:
    root = tmp_path / "install"
    root.mkdir()
    (root / "a.txt").write_text("a\n")
    for folder, body in (("v1.0_to_v1.1", "return True"), ("v1.1_to_v1.2", "return False")):
        (tmp_path / "migrations" / folder).mkdir(parents=True)
        version_from, version_to = folder[1:].split("_to_v")
        (tmp_path / "migrations" / folder / "001_x.py").write_text(
            textwrap.dedent(f"""
            def migrate_forward(project_root):
                print("hello from the migration")
                {body}

            def migrate_backward(project_root):
                return True

            MIGRATION_INFO = {{
                "version_from": "{version_from}", "version_to": "{version_to}",
                "description": "x", "breaking_changes": False,
                "estimated_duration_seconds": 1, "requires_restart": [],
            }}
            """)
        )
    return root


def _run(tmp_path: Path, setup: str) -> subprocess.CompletedProcess[str]:
    root = _installation(tmp_path)
    return subprocess.run(
        [sys.executable, "-c", SCRIPT.format(setup=setup), str(root)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_unconfigured_the_library_writes_nothing_to_stdout_or_stderr(tmp_path: Path) -> None:
    done = _run(tmp_path, "")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert done.stderr == ""


def test_a_host_logging_setup_receives_the_events(tmp_path: Path) -> None:
    setup = "import logging; logging.basicConfig(level=logging.INFO, stream=sys.stderr)"
    done = _run(tmp_path, setup)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "INFO:dopemux_update:migration.applied" in done.stderr
    assert "migration.output" in done.stderr
    assert "line='hello from the migration'" in done.stderr
    assert "ERROR:dopemux_update:migration.failed" in done.stderr


@pytest.mark.parametrize("level", ["WARNING"])
def test_the_host_logging_level_filters_the_events(tmp_path: Path, level: str) -> None:
    done = _run(tmp_path, f"import logging; logging.basicConfig(level=logging.{level})")
    assert "migration.applied" not in done.stderr
    assert "rollback.started" in done.stderr


def test_a_host_that_configured_structlog_gets_events_through_its_processors(
    tmp_path: Path,
) -> None:
    setup = textwrap.dedent("""
    import structlog
    def tag(logger, method, event_dict):
        event_dict["host"] = "yes"
        return event_dict
    structlog.configure(processors=[tag, structlog.processors.KeyValueRenderer(
        key_order=["event"])], logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    """)
    done = _run(tmp_path, setup)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "event='migration.applied'" in done.stderr
    assert "host='yes'" in done.stderr


def test_the_library_logs_normally_after_the_command_line_ran_in_the_same_process(
    tmp_path: Path,
) -> None:
    """main() configures structlog for its run log, then puts the previous setup back."""
    root = _installation(tmp_path)
    script = textwrap.dedent(f"""
    import asyncio, logging, sys
    from pathlib import Path
    from dopemux_update import OrchestrationPhase
    from dopemux_update.cli import main
    root = Path({str(root)!r})
    assert main(["stamp", "1.0", "--root", str(root)]) == 0
    assert main(["upgrade", "--to", "1.1", "--no-restart", "--root", str(root),
                 "--migrations", str(root.parent / "migrations")]) == 0
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    phase = OrchestrationPhase(project_root=root, migrations_dir=root.parent / "migrations",
                               current_version="1.1", target_version="1.2")
    assert not asyncio.run(phase.execute())
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "ERROR:dopemux_update:migration.failed" in done.stderr


def test_events_before_logging_is_imported_do_not_import_it_and_later_ones_arrive() -> None:
    """Until someone imports logging no one can have set it up: an event does not import it
    (start-up counts for a command); once a host sets a handler, the events reach it."""
    script = textwrap.dedent("""
        import sys
        from dopemux_update._core._log import get_logger
        get_logger().warning("early.event", n=1)
        assert "logging" not in sys.modules, "an event imported logging"
        import logging
        seen = []
        class Keep(logging.Handler):
            def emit(self, record):
                seen.append((record.dopemux_event, record.dopemux_fields))
        logging.getLogger("dopemux_update").addHandler(Keep())
        get_logger().warning("late.event", n=2)
        assert seen == [("late.event", {"n": 2})], seen
        print("ok")
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ok\n"
    assert done.stderr == ""
