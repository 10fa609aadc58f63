"""The README's table of JSON keys, for the tests that check commands against it."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROW = re.compile(r"^\| (?P<commands>`[^|]+`|any error) \| (?P<keys>[^|]+) \|$")


def documented() -> dict[str, set[str]]:
    """The README's table: command name -> the keys its JSON object must have."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### JSON output") : text.index("## Crash safety")]
    table: dict[str, set[str]] = {}
    for line in section.splitlines():
        match = ROW.match(line)
        if match is None:
            continue
        keys = set(re.findall(r"`([a-z_]+)`", match["keys"]))
        for command in re.findall(r"`([a-z ]+)`", match["commands"]) or ["any error"]:
            table[command] = keys
    return table
