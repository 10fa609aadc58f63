"""Migration: v0.1.0 to v0.2.0 - Register the leantime MCP server

Dopemux 0.2.0 ships a Leantime MCP server. This migration adds it in two places:

* ``config/mcp/broker.yaml``: a ``leantime`` entry under the top-level ``servers:`` mapping;
* ``docker-compose.yml``: an ``mcp-leantime`` service under the top-level ``services:`` mapping.

The YAML files are edited as text, line by line (standard library only), so that every byte
the migration does not add -- the user's comments, custom values, key order, quoting, line
endings -- is preserved. Each addition is one block delimited by marker comments
(``# >>> dopemux-update v0.2.0: ...`` / ``# <<< dopemux-update v0.2.0: ...``), inserted after
the last line of the parent mapping and indented like the existing entries. Rolling back
removes exactly the lines between (and including) the markers, so forward then backward
gives files byte-identical to the originals.

Forward is idempotent: an entry that already exists (added by this migration or by hand) is
left alone. Backward only removes blocks carrying our markers, never a hand-written entry.
Files are replaced atomically (temp file in the same folder, fsync, rename), keeping their mode.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from pathlib import Path
from typing import NamedTuple

MIGRATION_INFO = {
    "version_from": "0.1.0",
    "version_to": "0.2.0",
    "description": "Add the leantime MCP server to the broker config and docker-compose.yml",
    "breaking_changes": False,
    "estimated_duration_seconds": 5,
    "requires_restart": ["mcp-servers"],
    "backup_required": True,
}

_MARKER_TAG = "dopemux-update v0.2.0"
_DEFAULT_STEP = 2


# A NamedTuple rather than a dataclass: with postponed annotations, @dataclass looks the
# module up in sys.modules, which fails when a runner loads this file with importlib
# without registering it there.
class _Addition(NamedTuple):
    """One entry to add under a top-level mapping of a YAML file."""

    relpath: str
    parent_key: str
    entry: str
    # (depth, text): depth 0 is the entry itself, each level deeper adds one indent step.
    body: tuple[tuple[int, str], ...]

    @property
    def begin_marker(self) -> str:
        return f"# >>> {_MARKER_TAG}: {self.entry} (added by migration 001, removed on rollback)"

    @property
    def end_marker(self) -> str:
        return f"# <<< {_MARKER_TAG}: {self.entry}"


_ADDITIONS = (
    _Addition(
        relpath="config/mcp/broker.yaml",
        parent_key="servers",
        entry="leantime",
        body=(
            (0, "leantime:"),
            (1, "image: ghcr.io/dopemux/leantime-mcp:0.2.0"),
            (1, "port: 3007"),
            (1, "enabled: true"),
        ),
    ),
    _Addition(
        relpath="docker-compose.yml",
        parent_key="services",
        entry="mcp-leantime",
        body=(
            (0, "mcp-leantime:"),
            (1, "image: ghcr.io/dopemux/leantime-mcp:0.2.0"),
            (1, "restart: unless-stopped"),
            (1, "depends_on:"),
            (2, "- mcp-broker"),
            (1, "ports:"),
            (2, '- "3007:3007"'),
            (1, "environment:"),
            (2, "LEANTIME_API_URL: ${LEANTIME_API_URL:-http://localhost:8080/api/jsonrpc}"),
        ),
    ),
)


class _ConfigError(Exception):
    """A known condition under which the file cannot be edited safely."""


# --------------------------------------------------------------------------- text helpers


def _read_lines(path: Path, relpath: str) -> list[str]:
    """Return the file's lines with their line endings (joining them gives the exact text)."""
    if not path.is_file():
        raise _ConfigError(f"{relpath} not found in {path.parent}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _ConfigError(f"{relpath} is not valid UTF-8 ({exc.reason})") from exc
    # Split on "\n" only (str.splitlines would also split on \x85, \u2028, ...).
    parts = text.split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _newline_of(lines: list[str]) -> str:
    """The file's line ending, reused for the inserted lines."""
    for line in lines:
        if line.endswith("\n"):
            return "\r\n" if line.endswith("\r\n") else "\n"
    return "\n"


def _content(line: str) -> str:
    return line.rstrip("\r\n")


def _is_blank_or_comment(line: str) -> bool:
    stripped = _content(line).strip()
    return not stripped or stripped.startswith("#")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _find_parent(lines: list[str], key: str, relpath: str) -> int:
    """Index of the top-level ``key:`` line opening a block mapping."""
    header = re.compile(rf"^(['\"]?){re.escape(key)}\1[ \t]*:(.*)$")
    found: list[int] = []
    for index, line in enumerate(lines):
        match = header.match(_content(line))
        if match is None:
            continue
        rest = match.group(2).strip()
        if rest and not rest.startswith("#"):
            raise _ConfigError(
                f"{relpath}: top-level '{key}:' holds an inline value ({rest!r}), "
                "not a block mapping; cannot add an entry safely"
            )
        found.append(index)
    if not found:
        raise _ConfigError(f"{relpath} has no top-level '{key}:' mapping")
    if len(found) > 1:
        raise _ConfigError(f"{relpath} defines the top-level '{key}:' key more than once")
    return found[0]


def _parent_extent(lines: list[str], parent: int) -> tuple[int, list[int]]:
    """Return (index of the last line belonging to the mapping, indexes of its content lines).

    The mapping runs until the next line that is neither blank, indented, nor a column-0
    comment. Trailing blank lines and column-0 comments belong to whatever follows.
    """
    last = parent
    content: list[int] = []
    for index in range(parent + 1, len(lines)):
        line = lines[index]
        text = _content(line)
        if not text.strip():
            continue
        if not text[0].isspace():
            if text.startswith("#"):
                continue
            break
        last = index
        if not _is_blank_or_comment(line):
            content.append(index)
    return last, content


def _render(addition: _Addition, entry_indent: int, step: int, newline: str) -> list[str]:
    pad = " " * entry_indent
    lines = [pad + addition.begin_marker]
    lines += [pad + " " * (step * depth) + text for depth, text in addition.body]
    lines.append(pad + addition.end_marker)
    return [line + newline for line in lines]


def _plan_insert(lines: list[str], addition: _Addition) -> list[str] | None:
    """New lines with the block inserted, or None when the entry already exists."""
    if any(_content(line).strip() == addition.begin_marker for line in lines):
        return None
    parent = _find_parent(lines, addition.parent_key, addition.relpath)
    last, content = _parent_extent(lines, parent)

    first = _content(lines[content[0]]).strip() if content else ""
    if first == "-" or first.startswith(("- ", "-\t")):
        raise _ConfigError(
            f"{addition.relpath}: '{addition.parent_key}:' is a list, not a mapping; "
            "cannot add an entry safely"
        )
    entry_indent = _indent(lines[content[0]]) if content else _DEFAULT_STEP
    step = _DEFAULT_STEP
    for index in content[1:]:
        deeper = _indent(lines[index]) - entry_indent
        if deeper > 0:
            step = deeper
            break

    entry = re.compile(rf"^(['\"]?){re.escape(addition.entry)}\1[ \t]*:(\s|$)")
    for index in content:
        line = lines[index]
        if _indent(line) == entry_indent and entry.match(_content(line)[entry_indent:]):
            return None

    newline = _newline_of(lines)
    block = _render(addition, entry_indent, step, newline)
    before, after = lines[: last + 1], lines[last + 1 :]
    if not after and before and before[-1] == _content(before[-1]):
        # The file ends without a final newline right where we insert: keep it that way, so
        # the block's last line carries no newline and the rollback can restore the original.
        before[-1] += newline
        block[-1] = _content(block[-1])
    return before + block + after


def _plan_remove(lines: list[str], addition: _Addition) -> list[str] | None:
    """New lines without our block, or None when the block is absent."""
    begins = [i for i, line in enumerate(lines) if _content(line).strip() == addition.begin_marker]
    ends = [i for i, line in enumerate(lines) if _content(line).strip() == addition.end_marker]
    if not begins and not ends:
        return None
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise _ConfigError(
            f"{addition.relpath}: the '{addition.entry}' block markers are damaged "
            f"({len(begins)} begin / {len(ends)} end marker(s)); remove the block by hand"
        )
    begin, end = begins[0], ends[0]
    before, after = lines[:begin], lines[end + 1 :]
    if not after and before and lines[end] == _content(lines[end]):
        # Mirror of _plan_insert: the original file had no final newline.
        before[-1] = _content(before[-1])
    return before + after


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically, keeping the file mode (and symlinks)."""
    target = path.resolve()
    mode = stat.S_IMODE(target.stat().st_mode)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.chmod(mode)
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if os.name == "posix":
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# --------------------------------------------------------------------------- entry points


def migrate_forward(project_root: Path) -> bool:
    """Add the leantime server to the broker config and the compose file."""
    project_root = Path(project_root)
    planned: list[tuple[_Addition, Path, list[str]]] = []
    # Plan every edit before writing anything, so a known failure leaves both files untouched.
    for addition in _ADDITIONS:
        path = project_root / addition.relpath
        try:
            new_lines = _plan_insert(_read_lines(path, addition.relpath), addition)
        except _ConfigError as exc:
            print(f"  ❌ {exc}")
            return False
        if new_lines is None:
            print(f"  ✅ '{addition.entry}' already present in {addition.relpath}, leaving it")
        else:
            planned.append((addition, path, new_lines))

    for addition, path, new_lines in planned:
        print(f"  → Adding '{addition.entry}' under '{addition.parent_key}:' in {addition.relpath}")
        _write_atomic(path, "".join(new_lines).encode("utf-8"))
        print(f"  ✅ {addition.relpath} updated")
    return True


def migrate_backward(project_root: Path) -> bool:
    """Remove the blocks added by migrate_forward, restoring the files byte for byte."""
    project_root = Path(project_root)
    planned: list[tuple[_Addition, Path, list[str]]] = []
    for addition in reversed(_ADDITIONS):
        path = project_root / addition.relpath
        if not path.exists():
            print(f"  ⚠️  {addition.relpath} not found; no '{addition.entry}' block to remove")
            continue
        try:
            new_lines = _plan_remove(_read_lines(path, addition.relpath), addition)
        except _ConfigError as exc:
            print(f"  ❌ {exc}")
            return False
        if new_lines is None:
            print(f"  ✅ no '{addition.entry}' block in {addition.relpath}, nothing to remove")
        else:
            planned.append((addition, path, new_lines))

    for addition, path, new_lines in planned:
        print(f"  → Removing the '{addition.entry}' block from {addition.relpath}")
        _write_atomic(path, "".join(new_lines).encode("utf-8"))
        print(f"  ✅ {addition.relpath} restored")
    return True
