"""JSON files edited in place: key order, indentation and the final newline are kept."""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from .._core._exceptions import EditError
from ._atomic import read_text, saved_if_changed

__all__ = ["edit_json"]

_FIRST_INDENTED = re.compile(r"\n([ \t]+)\S")
_DEFAULT_INDENT = 2


class _Style(NamedTuple):
    indent: int | str | None
    final_newline: bool
    ensure_ascii: bool


@contextlib.contextmanager
def edit_json(path: str | os.PathLike[str]) -> Iterator[Any]:
    """Yield the JSON document at ``path`` (dicts keep the file's key order) to change in place.

    Written back atomically, with the file's indentation (a one-line file stays on one line;
    2 spaces when it cannot be told) and its final newline or lack of one, only when the block
    ends without an exception and the document changed.
    """
    target = Path(path)
    text = read_text(target)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EditError(f"not valid JSON: {exc}", path=target) from exc
    style = _style(text)
    with saved_if_changed(target, doc, lambda d: _dump(d, style, target)) as edited:
        yield edited


def _style(text: str) -> _Style:
    body = text.strip()
    match = _FIRST_INDENTED.search(body)
    indent: int | str | None
    if match is not None:
        whitespace = match.group(1)
        indent = len(whitespace) if set(whitespace) == {" "} else whitespace
    elif "\n" not in body and body not in ("{}", "[]"):
        indent = None  # written on one line: keep it that way
    else:
        indent = _DEFAULT_INDENT
    # Keep \uXXXX escapes if the file used them and nothing but ASCII; else write UTF-8 as is.
    return _Style(indent, text.endswith("\n"), text.isascii() and "\\u" in text)


def _dump(doc: Any, style: _Style, path: Path) -> str:
    try:
        text = json.dumps(doc, indent=style.indent, ensure_ascii=style.ensure_ascii)
    except (TypeError, ValueError) as exc:
        raise EditError(f"cannot write the document as JSON: {exc}", path=path) from exc
    return text + "\n" if style.final_newline else text
