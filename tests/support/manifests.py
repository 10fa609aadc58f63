"""A backup manifest's JSON document with its entries as objects of named fields, whatever
its format, so that tests edit entries by name: format 5 writes each entry as the array of
its fields in order; formats 2 to 4 as an object."""

from __future__ import annotations

import json
from typing import Any

from dopemux_update._backup._manifest import Entry

_DEFAULTS: dict[str, Any] = {**Entry._field_defaults, "sqlite": None}


def named(raw: bytes) -> dict[str, Any]:
    """The manifest ``raw``, its entries objects of named fields."""
    document: dict[str, Any] = json.loads(raw)
    if document["format"] >= 5:
        document["entries"] = {
            rel: dict(zip(Entry._fields, row, strict=True))
            for rel, row in document["entries"].items()
        }
    return document


def encoded(document: dict[str, Any], *, rows: bool = True) -> bytes:
    """``document`` (from :func:`named`) as manifest bytes: with ``rows`` each entry an array
    of every field in order, an unknown field's value added at its end (as a bad manifest
    would have it); else (formats 2 to 4) an object of the fields not at their defaults."""
    if rows:
        entries = {
            rel: [entry.get(name, _DEFAULTS.get(name)) for name in Entry._fields]
            + [value for name, value in entry.items() if name not in Entry._fields]
            for rel, entry in document["entries"].items()
        }
    else:
        entries = {
            rel: {
                name: value
                for name, value in entry.items()
                if name == "type" or value not in (_DEFAULTS.get(name), None, [])
            }
            for rel, entry in document["entries"].items()
        }
    return json.dumps({**document, "entries": entries}).encode()
