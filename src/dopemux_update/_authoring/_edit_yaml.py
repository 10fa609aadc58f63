"""YAML files edited in place with ruamel.yaml's round-trip mode, changing only the lines of
what was edited.

ruamel.yaml reproduces comments, key order and quoting, but it also normalises what it does
not model: ``[ "CMD", "ping" ]`` becomes ``["CMD", "ping"]``, ``{ A: 1 }`` becomes ``{A: 1}``,
whitespace-only lines and trailing spaces go. So the file is never written as ruamel renders
it. Instead, the unedited document and the edited one are rendered with the same settings
(``R0`` and ``R1``), their line diff says which lines the edit changed, and only those hunks
are carried over onto the original text ``O``: a line diff of ``R0`` against ``O`` (lines
matched by indentation and text, ignoring spaces inside the line) maps each line of ``R0``
to its place in ``O``. A hunk that touches a line ruamel rendered differently replaces just
that line (or region) of ``O``; every other byte stays. The result is checked: it must
render as the edited document does (but for blank lines and inner spaces), else the full
rendering is written, as before.

The indentation of block mappings and sequences is detected from the file (defaults:
2 spaces, sequences indented under their key: ``key:\\n  - item``); new lines get the file's
line ending (CRLF or LF) and an explicit ``---`` is kept; long lines are never re-wrapped.
"""

from __future__ import annotations

import bisect
import contextlib
import difflib
import importlib
import io
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from .._core._exceptions import EditError
from .._core._log import get_logger
from ._atomic import read_text, write_text

__all__ = ["edit_yaml", "load_yaml", "quoted"]

logger = get_logger()

_INSTALL_HINT = (
    "ruamel.yaml is not installed, and dopemux-update needs it: pip install 'ruamel.yaml>=0.18'"
)
# A line holding only a block mapping key ("key:" or "key:  # comment"), value on later lines.
_KEY_ONLY = re.compile(r"""^(?:[^\s#'"\-?][^#]*?|'[^']*'|"[^"]*")\s*:\s*(?:#.*)?$""")
_EXPLICIT_START = re.compile(r"^---(?:\s|$)", re.MULTILINE)
_NO_WRAP = 1 << 16


class _Codec(NamedTuple):
    """A configured ruamel ``YAML`` instance and how to write the file back."""

    yaml: Any
    error: type[Exception]
    crlf: bool


class _Layout(NamedTuple):
    mapping: int = 2
    sequence: int = 4
    offset: int = 2
    crlf: bool = False
    explicit_start: bool = False


def load_yaml(path: str | os.PathLike[str]) -> Any:
    """Read the YAML file at ``path`` as a round-trip document (``CommentedMap`` & co.)."""
    doc, _ = _read(Path(path))
    return doc


@contextlib.contextmanager
def edit_yaml(path: str | os.PathLike[str]) -> Iterator[Any]:
    """Yield the YAML document at ``path`` for in-place changes, then save it atomically.

    The file is rewritten only when the block ends without an exception *and* the document
    changed (its rendering differs from the unchanged document's); otherwise it is not
    touched at all, not even its mtime. Only the lines of the keys the block changed, added
    or removed are written anew; every other line keeps its bytes, flow ``[ "CMD", "ping" ]``
    spacing, whitespace-only lines and a missing final newline included (see the module
    docstring). Adding a key and deleting it again gives the file back byte for byte.
    """
    target = Path(path)
    text = read_text(target)
    doc, codec = _parse(text, target)
    before = _dump(doc, codec, target)
    yield doc
    after = _dump(doc, codec, target)
    if after != before:
        write_text(target, _carry_over(text, before, after, codec, target))


def quoted(text: str) -> str:
    """``text`` as a string that YAML files get in double quotes: ``- "3007:3007"``.

    For values a YAML 1.1 reader (PyYAML, older docker-compose) would take for something
    else, such as ``12:30`` (a number in base 60) or ``yes`` (a boolean).
    """
    scalarstring = _ruamel(None, "ruamel.yaml.scalarstring")
    value: str = scalarstring.DoubleQuotedScalarString(text)  # a str subclass
    return value


def _ruamel(path: Path | None, module: str = "ruamel.yaml") -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise EditError(_INSTALL_HINT, path=path) from exc


def _read(path: Path) -> tuple[Any, _Codec]:
    return _parse(read_text(path), path)


def _parse(text: str, path: Path) -> tuple[Any, _Codec]:
    ruamel = _ruamel(path)
    layout = _layout(text)
    yaml = ruamel.YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = _NO_WRAP
    yaml.indent(mapping=layout.mapping, sequence=layout.sequence, offset=layout.offset)
    yaml.explicit_start = layout.explicit_start
    try:
        doc = yaml.load(text.replace("\r\n", "\n") if layout.crlf else text)
    except ruamel.YAMLError as exc:
        raise EditError(f"not valid YAML: {exc}", path=path) from exc
    return doc, _Codec(yaml=yaml, error=ruamel.YAMLError, crlf=layout.crlf)


def _dump(doc: Any, codec: _Codec, path: Path) -> str:
    """The document as ruamel renders it, with ``\\n`` line endings."""
    stream = io.StringIO()
    try:
        codec.yaml.dump(doc, stream)
    except codec.error as exc:
        raise EditError(f"cannot write the document as YAML: {exc}", path=path) from exc
    return stream.getvalue()


def _carry_over(original: str, before: str, after: str, codec: _Codec, path: Path) -> str:
    """``original`` with the line hunks that turn ``before`` into ``after``.

    Checked: the result must render as ``after`` does, but for blank lines and spaces
    inside a line (which ruamel renders differently depending on what follows them); if it
    does not (a mapping this module did not foresee), the full rendering ``after`` is
    returned instead, as ruamel writes it, and a warning is logged.
    """
    newline = "\r\n" if codec.crlf else "\n"
    merged = _merge(original, before, after, newline)
    try:
        reloaded = codec.yaml.load(merged.replace("\r\n", "\n") if codec.crlf else merged)
        faithful = _outline(_dump(reloaded, codec, path)) == _outline(after)
    except (codec.error, EditError):
        faithful = False
    if faithful:
        return merged
    logger.warning("edit.yaml.full_rewrite", path=str(path))
    return after.replace("\n", newline)


def _lines(text: str) -> list[str]:
    """``text`` split after each ``\\n`` (only there, unlike ``str.splitlines``)."""
    parts = text.split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _outline(rendering: str) -> list[str]:
    """The non-blank lines of a rendering, by their shape: keys, values and comments."""
    return [_shape(line) for line in _lines(rendering) if line.strip()]


def _shape(line: str) -> str:
    """What lines are matched by: the indentation and the text without its spaces, so that
    ``[ "CMD", "ping" ]`` matches ruamel's ``["CMD", "ping"]``. A whitespace-only line (which
    ruamel drops) is kept as it is: it never matches the empty lines ruamel keeps."""
    content = line.lstrip(" ")
    if not content.strip():
        return line
    return line[: len(line) - len(content)] + "".join(content.split())


def _merge(original: str, before: str, after: str, newline: str) -> str:
    """Carry the line hunks of ``before`` -> ``after`` (two renderings) over onto
    ``original`` (the text ``before`` was rendered from); see the module docstring."""
    unterminated = bool(original) and not original.endswith("\n")
    o_lines = _lines(original + "\n" if unterminated else original)
    r0, r1 = _lines(before), _lines(after)
    o_plain = [line.replace("\r\n", "\n") for line in o_lines]
    # R0 boundary -> the O boundaries it can stand for; boundaries inside a region that
    # ruamel rendered differently from O (normalised) have none.
    places: dict[int, list[int]] = {0: [0], len(r0): [len(o_lines)]}
    matcher = difflib.SequenceMatcher(
        None, [_shape(line) for line in r0], [_shape(line) for line in o_plain], autojunk=False
    )
    for tag, i1, i2, j1, _j2 in matcher.get_opcodes():
        if tag == "equal":
            for i in range(i1, i2 + 1):
                places.setdefault(i, []).append(j1 + i - i1)
    safe = sorted(places)

    def floor(i: int) -> int:
        return safe[bisect.bisect_right(safe, i) - 1]

    def ceil(i: int) -> int:
        return safe[bisect.bisect_left(safe, i)]

    # Hunks of R0 -> R1, widened to safe boundaries and merged where they meet.
    groups: list[list[int]] = []  # [A1, A2, B1, B2]
    changes = difflib.SequenceMatcher(None, r0, r1, autojunk=False).get_opcodes()
    for tag, a1, a2, b1, b2 in changes:
        if tag == "equal":
            continue
        start, end = floor(a1), ceil(a2)
        if groups and start <= groups[-1][1]:
            group = groups[-1]  # hunks come in order: its start stays
            if end >= group[1]:
                group[1], group[3] = end, b2 + (end - a2)
        else:
            groups.append([start, end, b1 - (a1 - start), b2 + (end - a2)])

    pieces: list[str] = []
    cursor = 0
    for start, end, b1, b2 in groups:
        if start == end:  # a pure insertion: before any lines ruamel dropped there
            o_start = o_end = min(places[start])
        else:
            o_start = max(places[start])
            o_end = max(min(places[end]), o_start)
        pieces.extend(o_lines[cursor:o_start])
        pieces.extend(line.replace("\n", newline) for line in r1[b1:b2])
        cursor = o_end
    pieces.extend(o_lines[cursor:])
    merged = "".join(pieces)
    if unterminated and merged.endswith("\n"):
        merged = merged[: -len(newline)] if merged.endswith(newline) else merged[:-1]
    return merged


def _layout(text: str) -> _Layout:
    """Guess the block indentation of ``text``: mapping indent, sequence indent, dash offset.

    Looks for the first ``key:`` line followed by a deeper nested key (mapping indent) and by
    a ``- item`` line (dash offset from the key, and where the item's content starts).
    """
    mapping: int | None = None
    sequence: int | None = None
    offset: int | None = None
    key_indent: int | None = None  # indent of the previous line, if it was "key:" alone
    first = True
    for line in text.splitlines():
        content = line.lstrip(" ")
        if not content.strip() or content.startswith(("#", "---")):
            continue
        indent = len(line) - len(content)
        if first and indent == 0 and content.startswith("- "):
            # The document is a sequence, its dashes at column 0.
            offset = 0
            item = content[1:]
            sequence = 1 + len(item) - len(item.lstrip(" "))
        first = False
        if key_indent is not None and indent > key_indent:
            if content.startswith("- ") and offset is None:
                offset = indent - key_indent
                item = content[1:]
                sequence = offset + 1 + len(item) - len(item.lstrip(" "))
            elif not content.startswith("-") and mapping is None:
                mapping = indent - key_indent
        elif key_indent == indent and content.startswith("- ") and offset is None:
            # "key:\n- item": the dash at the key's column
            offset = 0
            item = content[1:]
            sequence = 1 + len(item) - len(item.lstrip(" "))
        if mapping is not None and offset is not None:
            break
        key_indent = indent if _KEY_ONLY.match(content.rstrip()) else None
    step = mapping or 2
    if offset is None or sequence is None:
        offset, sequence = step, step + 2
    return _Layout(
        mapping=step,
        sequence=max(sequence, offset + 2),  # ruamel needs room for "- " after the offset
        offset=offset,
        crlf="\r\n" in text,
        explicit_start=_EXPLICIT_START.search(text) is not None,
    )
