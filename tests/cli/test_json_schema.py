"""Every command's `--json` object has the keys the README's table documents, no fewer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import EXAMPLE_MIGRATIONS
from dopemux_update.cli import main
from support.readme_json import documented


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    main([*argv, "--json"])
    payload: dict[str, Any] = json.loads(capsys.readouterr().out)
    return payload


def test_every_command_prints_the_documented_keys(
    example_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = documented()
    where = ["--root", str(example_copy), "--migrations", str(EXAMPLE_MIGRATIONS)]
    seen: dict[str, dict[str, Any]] = {
        "status": run(capsys, "status", *where),
        "plan": run(capsys, "plan", *where),
        "verify": run(capsys, "verify", *where),
        "backups create": run(capsys, "backups", "create", *where),
        "upgrade": run(capsys, "upgrade", "--no-restart", *where),
        "downgrade": run(capsys, "downgrade", "--to", "0.1.0", "--yes", "--no-restart", *where),
        "recover": run(capsys, "recover", *where),
        "stamp": run(capsys, "stamp", "0.1.0", *where),
        "backups list": run(capsys, "backups", "list", *where),
        "history": run(capsys, "history", *where),
        "restart": run(capsys, "restart", *where),
    }
    backup_id = seen["backups list"]["backups"][0]["id"]
    seen["backups verify"] = run(capsys, "backups", "verify", backup_id, *where)
    seen["backups restore"] = run(capsys, "backups", "restore", backup_id, "--yes", *where)
    seen["backups prune"] = run(capsys, "backups", "prune", "--keep", "1", "--yes", *where)
    new_where = ["--root", str(example_copy), "--migrations", str(tmp_path / "migrations")]
    seen["new"] = run(capsys, "new", "--from", "0.2.0", "--to", "0.3.0", "x", *new_where)
    seen["any error"] = run(capsys, "plan", "--to", "banana", *where)

    assert set(seen) == set(table), "every documented command is run here, and only those"
    for command, payload in seen.items():
        missing = table[command] - set(payload)
        assert not missing, f"{command}: documented but missing: {sorted(missing)}"
        named = "plan" if command == "any error" else command  # the failing command's name
        assert payload["command"] == named  # every object names its command
        assert isinstance(payload["ok"], bool)
        assert isinstance(payload["exit_code"], int)
        assert list(payload)[:3] == ["command", "ok", "exit_code"]
    assert seen["upgrade"]["ok"] is True
    assert seen["verify"]["ok"] is True
    assert seen["any error"]["ok"] is False
    assert seen["any error"]["exit_code"] == 2
    assert seen["any error"]["nothing_changed"] is True
    assert "Nothing was changed" not in seen["any error"]["error"]
