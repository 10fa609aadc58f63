"""What a backup covers, and walking it: scope rules, globs, and names that are not UTF-8."""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "Scope",
    "TreeEntry",
    "close_opened",
    "decode_name",
    "encode_name",
    "kind_of",
    "link_destination",
    "link_leaders",
    "may_set_owner",
    "shown",
    "walk",
]


def _segment_regex(segment: str) -> str:
    out = []
    index = 0
    while index < len(segment):
        char = segment[index]
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = segment.find("]", index + 2)
            if end == -1:
                out.append(re.escape(char))
            else:
                body = segment[index + 1 : end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body.replace(chr(92), chr(92) * 2)}]")
                index = end
        else:
            out.append(re.escape(char))
        index += 1
    return "".join(out)


def compile_glob(pattern: str) -> re.Pattern[str]:
    """A glob over ``/``-separated relative paths: ``*`` and ``?`` stay inside one folder,
    ``**`` spans folders, and a pattern without ``/`` matches a name at any depth
    (``*.log``), as in ``.gitignore``."""
    cleaned = pattern.strip().strip("/")
    if not cleaned:
        raise ValueError(f"empty glob pattern {pattern!r}")
    segments = cleaned.split("/")
    parts = []
    for position, segment in enumerate(segments):
        last = position == len(segments) - 1
        if segment == "**":
            parts.append(".*" if last else "(?:[^/]+/)*")
        else:
            parts.append(_segment_regex(segment) + ("" if last else "/"))
    body = "".join(parts)
    if len(segments) == 1:
        body = "(?:[^/]+/)*" + body
    try:
        return re.compile(body)
    except re.error as exc:
        raise ValueError(f"invalid glob pattern {pattern!r}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Scope:
    """What a backup covers: ``root`` minus ``excluded``, limited to ``included`` if given.

    Patterns are globs over relative paths (see :func:`compile_glob`); a pattern that matches
    a folder covers everything inside it. Excluded folders are never entered.
    """

    root: Path
    excluded: tuple[str, ...] = ()
    included: tuple[str, ...] = ()

    @classmethod
    def for_installation(
        cls,
        root: Path,
        *,
        state_dir: Path,
        migrations_dir: Path | None = None,
        include: Iterable[str] = (),
        exclude: Iterable[str] = (),
    ) -> Scope:
        """The default scope: the root minus the state folder, ``.git`` and the migrations."""
        root = root.resolve()
        excluded = [".git"]
        for inner in (state_dir, migrations_dir):
            if inner is None:
                continue
            with contextlib.suppress(ValueError):
                relative = inner.resolve().relative_to(root)
                if relative.parts:
                    excluded.append(glob_escape(relative.as_posix()))
        excluded.extend(exclude)
        scope = cls(root, tuple(dict.fromkeys(excluded)), tuple(dict.fromkeys(include)))
        scope.matchers()  # fail now on a bad pattern
        return scope

    def matchers(self) -> tuple[list[re.Pattern[str]], list[re.Pattern[str]]]:
        return [compile_glob(p) for p in self.excluded], [compile_glob(p) for p in self.included]


def glob_escape(path: str) -> str:
    """A glob that matches exactly ``path``."""
    return re.sub(r"([*?\[])", r"[\1]", path)


_RAW_NAME = "\x00b64:"  # a NUL never occurs in a file name, so this prefix is unambiguous


def encode_name(name: str) -> str:
    """A JSON-safe form of a path or link target that may not be valid UTF-8."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        import base64  # noqa: PLC0415 - for the rare name that is not UTF-8

        return _RAW_NAME + base64.b64encode(os.fsencode(name)).decode("ascii")
    return name


def link_destination(root: Path, link: Path) -> str | None:
    """Where the symlink at ``link`` finally leads, relative to ``root`` (a resolved path),
    following every symlink on the way as the kernel would; None when that is outside."""
    relative = os.path.relpath(os.path.realpath(link), root)
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        return None
    return relative


def shown(name: str) -> str:
    """A name fit to print: bytes that are not UTF-8 appear as backslash escapes."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def decode_name(stored: str) -> str:
    if stored.startswith(_RAW_NAME):
        import base64  # noqa: PLC0415 - for the rare name that is not UTF-8

        return os.fsdecode(base64.b64decode(stored[len(_RAW_NAME) :]))
    return stored


def kind_of(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "device"


class TreeEntry(NamedTuple):
    """One path found under a scope's root (a named tuple: a walk makes thousands)."""

    rel: str
    info: os.stat_result
    kind: str
    in_scope: bool  # False for a folder walked only because included paths lie inside it


def walk(scope: Scope, *, opened: list[tuple[Path, int]] | None = None) -> Iterator[TreeEntry]:
    """Every path of ``scope``, parents before children; symlinks are never followed.

    A folder its owner made unreadable (``chmod 000``) is opened for the owner (``u+rx``)
    while it is walked and given its mode back at the end; the entries report the modes
    they had. A caller that reads files inside after the walk passes ``opened``: those
    folders are listed there (with their modes) and stay open until it calls
    :func:`close_opened`. One the process may not open (another user's) raises
    PermissionError.
    """
    excluded, included = scope.matchers()
    skipped, taken = _any_of(excluded), _any_of(included)
    stack: list[tuple[str, bool]] = [("", not included)]
    keep_open = opened is not None
    opened = [] if opened is None else opened
    try:
        while stack:
            relative, inside = stack.pop()
            folder = scope.root / relative if relative else scope.root
            found = []
            fd = _open_folder(folder, opened, follow=not relative)
            try:
                # Listed through the folder's descriptor, each child is looked up in it, not
                # from the root along its whole path: a tenth faster over thousands of files.
                with os.scandir(fd) as entries:
                    children = sorted(entries, key=lambda e: e.name, reverse=True)
                for child in children:
                    rel = f"{relative}/{child.name}" if relative else child.name
                    if skipped(rel):
                        continue
                    in_scope = inside or bool(taken(rel))
                    info = child.stat(follow_symlinks=False)
                    kind = "file" if stat.S_ISREG(info.st_mode) else kind_of(info.st_mode)
                    if kind == "dir" or in_scope:
                        found.append(TreeEntry(rel, info, kind, in_scope))
            finally:
                os.close(fd)
            for item in found:
                yield item
                if item.kind == "dir":
                    stack.append((item.rel, item.in_scope))
    finally:
        if not keep_open:
            close_opened(opened)


def _any_of(patterns: list[re.Pattern[str]]) -> Callable[[str], object]:
    """A test of whether any of ``patterns`` matches a whole path: one regular expression
    (the walk asks it of every path)."""
    if not patterns:
        return lambda _rel: None
    return re.compile("|".join(f"(?:{p.pattern})" for p in patterns)).fullmatch


def close_opened(opened: list[tuple[Path, int]]) -> None:
    """Give the folders a walk opened for their owner their modes back, deepest first."""
    for path, mode in reversed(opened):
        with contextlib.suppress(OSError):
            path.chmod(mode, follow_symlinks=False)
    opened.clear()


_EFFECTIVE = os.access in os.supports_effective_ids


def _open_folder(folder: Path, opened: list[tuple[Path, int]], *, follow: bool) -> int:
    """A descriptor of ``folder`` to list, first giving its owner ``u+rx`` if that is what
    it lacks (the original mode is added to ``opened``, to be put back). A symlink is
    followed only when ``follow`` (the root): a folder below that became one is refused."""
    if not os.access(folder, os.R_OK | os.X_OK, effective_ids=_EFFECTIVE, follow_symlinks=False):
        info = folder.lstat()
        if stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid():
            wanted = stat.S_IMODE(info.st_mode) | stat.S_IRUSR | stat.S_IXUSR
            folder.chmod(wanted, follow_symlinks=False)
            opened.append((folder, stat.S_IMODE(info.st_mode)))
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    return os.open(folder, flags)


def link_leaders(entries: Iterable[TreeEntry]) -> dict[str, str]:
    """Hard links among ``entries``: each file that shares its inode with an earlier one (in
    the sorted order of names as a manifest stores them) mapped to that first path. Links to
    files outside ``entries`` do not count."""
    groups: dict[tuple[int, int], list[str]] = {}
    for entry in entries:
        if entry.kind == "file" and entry.info.st_nlink > 1:
            groups.setdefault((entry.info.st_dev, entry.info.st_ino), []).append(entry.rel)
    leaders: dict[str, str] = {}
    for names in groups.values():
        first, *others = sorted(names, key=encode_name)
        leaders.update(dict.fromkeys(others, first))
    return leaders


def may_set_owner(uid: int, gid: int) -> bool:
    """Whether this process may give a path owner ``uid`` and group ``gid``: as root, any
    known owner; otherwise only its own user with one of its own groups. Owners are compared,
    and a restore sets them, exactly where this holds."""
    if uid < 0 or gid < 0:
        return False
    if os.geteuid() == 0:
        return True
    return uid == os.geteuid() and (gid == os.getegid() or gid in os.getgroups())
