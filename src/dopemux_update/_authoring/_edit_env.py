"""``.env`` files edited in place: only the lines of the keys that changed are rewritten.

The format is docker compose's: ``KEY=VALUE`` lines, optionally ``export KEY=VALUE``;
``#`` starts a comment at the start of a line or after whitespace in an unquoted value;
values are unquoted, ``'single quoted'`` (literal) or ``"double quoted"`` (``\\"``, ``\\\\``,
``\\n``, ``\\t`` and ``\\r`` escapes; it may span lines). Comments, blank lines, order,
``export``, spacing, quoting, line endings and a missing final newline are kept.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path

from .._core._exceptions import EditError
from ._atomic import read_text, write_text

__all__ = ["EnvFile", "edit_env"]

_ASSIGNMENT = re.compile(
    r"(?P<lead>[ \t]*)(?P<export>export[ \t]+)?(?P<key>[A-Za-z_][A-Za-z0-9_.\-]*)"
    r"(?P<eq>[ \t]*=[ \t]*)"
)
_BARE_KEY = re.compile(r"[ \t]*(?:export[ \t]+)?[A-Za-z_][A-Za-z0-9_.\-]*[ \t]*")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
# Up to the end, trailing blanks, or " #" (a comment); "a#b" is a value.
_UNQUOTED_VALUE = re.compile(r"(?P<value>(?:[^\s#]|(?<=\S)#|[ \t]+(?![ \t]*(?:#|$)))*)")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}
_NEEDS_QUOTES = re.compile(r"""[\s#'"\\]""")


@dataclass
class _Line:
    """One line of the file (a double-quoted value may make it several), as written."""

    text: str  # without its line ending
    ending: str  # "\n", "\r\n" or "" (the last line of a file without a final newline)
    key: str | None = None
    value: str | None = None
    head: str = ""  # text before the value: "export KEY="
    quote: str = ""  # '', "'" or '"'
    tail: str = ""  # text after the value: '  # comment'


class EnvFile(MutableMapping[str, str]):
    """The keys of an ``.env`` file and their values (unquoted), in file order.

    Setting an existing key rewrites only its value, keeping ``export``, its quotes (when
    the new value needs none, or the same ones) and its comment; a new key is appended as
    ``KEY=VALUE`` (double-quoted when needed); deleting a key removes its line(s). For a key
    written twice, the last one counts, as for docker compose.
    """

    def __init__(self, text: str, path: Path) -> None:
        self._path = path
        self._lines = _parse(text, path)
        self._newline = "\r\n" if "\r\n" in text else "\n"

    def __getitem__(self, key: str) -> str:
        line = self._find(key)
        if line is None or line.value is None:
            raise KeyError(key)
        return line.value

    def __setitem__(self, key: str, value: str) -> None:
        if not isinstance(value, str):
            raise EditError(
                f"{key}: a .env value must be a str, not {type(value).__name__}", path=self._path
            )
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise EditError(f"not a valid .env key: {key!r}", path=self._path)
        line = self._find(key)
        if line is not None and line.value == value:
            return
        if line is None:
            if self._lines and not self._lines[-1].ending:
                self._lines[-1].ending = self._newline
                ending = ""  # the file had no final newline: it still has none
            else:
                ending = self._newline
            line = _Line(text="", ending=ending, key=key, head=f"{key}=")
            self._lines.append(line)
        line.quote = _quote_for(value, line.quote)
        line.value = value
        line.text = line.head + _render(value, line.quote) + line.tail

    def __delitem__(self, key: str) -> None:
        doomed = [line for line in self._lines if line.key == key]
        if not doomed:
            raise KeyError(key)
        last = self._lines[-1]
        self._lines = [line for line in self._lines if line.key != key]
        if last in doomed and self._lines and not last.ending:
            self._lines[-1].ending = ""  # the file had no final newline: keep it that way

    def __iter__(self) -> Iterator[str]:
        seen: dict[str, None] = {}
        for line in self._lines:
            if line.key is not None:
                seen.setdefault(line.key)
        return iter(seen)

    def __len__(self) -> int:
        return len({line.key for line in self._lines if line.key is not None})

    def text(self) -> str:
        """The file's text as it stands."""
        return "".join(line.text + line.ending for line in self._lines)

    def _find(self, key: str) -> _Line | None:
        for line in reversed(self._lines):
            if line.key == key:
                return line
        return None


@contextlib.contextmanager
def edit_env(path: str | os.PathLike[str]) -> Iterator[EnvFile]:
    """Yield the ``.env`` file at ``path`` as a mutable mapping of its keys to their values.

    Written back atomically (keeping the file's mode) only when the block ends without an
    exception and the text changed. A line that is neither a comment, blank, ``KEY=VALUE``
    nor a bare ``KEY`` raises :class:`EditError` naming the file and the line, and nothing
    is written.
    """
    target = Path(path)
    text = read_text(target)
    env = EnvFile(text, target)
    yield env
    changed = env.text()
    if changed != text:
        write_text(target, changed)


def _quote_for(value: str, current: str) -> str:
    """The quotes ``value`` is written with: the line's own where they can hold it."""
    if current == "'" and "'" not in value and "\n" not in value:
        return "'"
    if current == '"':
        return '"'
    return '"' if _NEEDS_QUOTES.search(value) else ""


def _render(value: str, quote: str) -> str:
    if quote == '"':
        escaped = (
            value.replace("\\", "\\\\")
            .replace('"', '\\"')
            .replace("\n", "\\n")
            .replace("\r", "\\r")
        )
        return f'"{escaped}"'
    return f"{quote}{value}{quote}"


def _split(text: str) -> list[tuple[str, str]]:
    """(line, ending) pairs; the last line's ending is "" without a final newline."""
    pairs: list[tuple[str, str]] = []
    for raw in text.splitlines(keepends=True) if text else []:
        body = raw.rstrip("\r\n")
        pairs.append((body, raw[len(body) :]))
    return pairs


def _parse(text: str, path: Path) -> list[_Line]:
    pairs = _split(text)
    lines: list[_Line] = []
    index = 0
    while index < len(pairs):
        body, ending = pairs[index]
        number = index + 1
        index += 1
        stripped = body.strip()
        match = _ASSIGNMENT.match(body)
        if match is None:
            if stripped and not stripped.startswith("#") and not _BARE_KEY.fullmatch(body):
                raise EditError(f"line {number}: not KEY=VALUE: {body!r}", path=path)
            lines.append(_Line(text=body, ending=ending))
            continue
        rest = body[match.end() :]
        head = body[: match.end()]
        quote = rest[:1] if rest[:1] in ("'", '"') else ""
        if quote == "'":
            close = rest.find("'", 1)
            if close < 0:
                raise EditError(f"line {number}: unterminated single quote", path=path)
            value, tail = rest[1:close], rest[close + 1 :]
        elif quote == '"':
            # A double-quoted value may go on over the next lines.
            while (found := _closing_quote(rest)) < 0:
                if index >= len(pairs):
                    raise EditError(f"line {number}: unterminated double quote", path=path)
                rest += ending + pairs[index][0]
                body += ending + pairs[index][0]
                ending = pairs[index][1]
                index += 1
            value, tail = _unescape(rest[1:found]), rest[found + 1 :]
        else:
            unquoted = _UNQUOTED_VALUE.match(rest)
            value = unquoted.group("value") if unquoted else ""
            tail = rest[len(value) :]
        if tail.strip() and not tail.lstrip().startswith("#"):
            raise EditError(f"line {number}: unexpected text after the value: {body!r}", path=path)
        lines.append(
            _Line(
                text=body,
                ending=ending,
                key=match.group("key"),
                value=value,
                head=head,
                quote=quote,
                tail=tail,
            )
        )
    return lines


def _closing_quote(rest: str) -> int:
    """Index of the ``"`` closing the value that ``rest`` opens, or -1."""
    position = 1
    while position < len(rest):
        char = rest[position]
        if char == "\\":
            position += 2
            continue
        if char == '"':
            return position
        position += 1
    return -1


def _unescape(raw: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(0)), raw, flags=re.DOTALL)
