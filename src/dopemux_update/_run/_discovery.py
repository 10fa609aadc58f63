"""Find migration folders and files, import them by path and validate them.

Scanning (folder names only) is cheap and covers every folder, because planning needs the
whole version graph. Loading (importing and validating files) covers only the folders on
the plan. Both are synchronous: callers run them in a worker thread.

A ``MIGRATION_INFO`` that ``_declared.accept`` plainly accepts is not shown to pydantic; any
other goes to ``MigrationInfo``, whose verdict and messages stand. So a run of valid
migrations does not import pydantic.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import inspect
import itertools
import marshal
import os
import re
import sys
import types
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .._core._declared import Declared, accept
from .._core._exceptions import MigrationValidationError, Problem
from .._core._log import get_logger
from .._core._models import Migration, Transition
from .._core._versions import cached_version
from ._scan import Catalog as Catalog  # noqa: PLC0414 - scanning lives in ._scan
from ._scan import is_ignored
from ._scan import scan_migrations as scan_migrations  # noqa: PLC0414 - as Catalog
from ._shown import exception_text, is_real_interrupt, shown

if TYPE_CHECKING:
    from pydantic import ValidationError

    from .._core._info import MigrationInfo

__all__ = ["Catalog", "load_migration", "load_transitions", "scan_migrations"]

FILE_NAME = re.compile(r"^(?P<number>\d+)_(?P<name>[A-Za-z0-9_]+)\.py$")
_module_counter = itertools.count(1)

logger = get_logger()


def load_transitions(transitions: Iterable[Transition]) -> dict[str, tuple[Migration, ...]]:
    """Import and validate every migration file of ``transitions``.

    Returns the migrations of each transition (keyed by folder name) in numeric order.
    Raises :class:`MigrationValidationError` listing every problem found, across all files.
    """
    problems: list[Problem] = []
    loaded: dict[str, tuple[Migration, ...]] = {}
    for transition in transitions:
        migrations, found = _load_folder(transition)
        problems.extend(found)
        loaded[transition.name] = migrations
    if problems:
        raise MigrationValidationError(problems)
    return loaded


def _load_folder(transition: Transition) -> tuple[tuple[Migration, ...], list[Problem]]:
    problems: list[Problem] = []
    numbered: dict[int, str] = {}
    migrations: list[Migration] = []
    # scandir, not iterdir: the entry knows its kind (no stat a file) and its name (no
    # path parsing), and a plan reads a thousand of them.
    with os.scandir(transition.path) as listing:
        entries = sorted(listing, key=_entry_name)
    for entry in entries:
        name = entry.name
        if not name.endswith(".py") or is_ignored(name) or not entry.is_file():
            continue
        path = transition.path / name
        match = FILE_NAME.match(name)
        if match is None:
            problems.append(
                Problem(
                    path,
                    "not a migration file name: expected NNN_name.py"
                    " (name helper modules with a leading '_' to keep them out)",
                )
            )
            continue
        number = int(match["number"])
        if number in numbered:
            problems.append(Problem(path, f"number {number} is already used by {numbered[number]}"))
            continue
        numbered[number] = name
        result = load_migration(path, transition, number=number, name=match["name"])
        if isinstance(result, Migration):
            migrations.append(result)
        else:
            problems.extend(result)
    migrations.sort(key=lambda m: m.number)
    return tuple(migrations), problems


def _entry_name(entry: os.DirEntry[str]) -> str:
    return entry.name


def load_migration(
    path: Path, transition: Transition, *, number: int, name: str
) -> Migration | list[Problem]:
    """Import one migration file by path and validate it; return it or its problems."""
    try:
        source = _read(str(path))
    except OSError as exc:
        return [Problem(path, f"cannot be read: {exc.strerror or exc}")]
    module = _import_source(path, source)
    if isinstance(module, Problem):
        return [module]
    try:
        return _validate(path, module, transition, number=number, name=name, source=source)
    except BaseException as exc:  # the file's own code ran here: even a SystemExit is its problem
        if is_real_interrupt(exc):
            raise
        return [Problem(path, f"cannot be validated: {exception_text(exc)}")]


def _validate(
    path: Path,
    module: types.ModuleType,
    transition: Transition,
    *,
    number: int,
    name: str,
    source: bytes,
) -> Migration | list[Problem]:
    """Check the imported module's functions and MIGRATION_INFO. Migration code may run here
    (a module ``__getattr__``, a ``__repr__`` of a value): the caller guards it."""
    problems: list[Problem] = []
    functions = [_check_function(path, module, n) for n in ("migrate_forward", "migrate_backward")]
    problems.extend(p for p in functions if isinstance(p, Problem))
    info = _check_info(path, module, transition, problems)
    if problems or info is None:
        return problems
    forward, backward = functions
    assert callable(forward)  # noqa: S101 - narrowed by the checks above
    assert callable(backward)  # noqa: S101
    return Migration(
        id=f"{transition.name}/{_stem(path)}",
        number=number,
        name=name,
        path=path,
        transition=transition,
        info=info,
        forward=forward,
        backward=backward,
        checksum=hashlib.sha256(source).hexdigest(),
    )


def _read(path: str) -> bytes:
    """The whole file, with plain system calls: ``open()`` builds a buffered file object
    (and asks for its size) for each of a thousand small files, twice as slow."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


@functools.lru_cache(maxsize=64)
def _cache_form(folder: str, prefix: str | None) -> tuple[str, str]:
    """Where ``cache_from_source`` puts the bytecode of ``folder/NAME.py`` (in the folder's
    ``__pycache__``, or under ``sys.pycache_prefix``): the text before and after NAME,
    worked out once per folder. NAME has no dot (``NNN_name``): it is all that varies."""
    del prefix  # a part of the cache's key only
    probe = importlib.util.cache_from_source(f"{folder}{os.sep}N.py")
    before, _, after = probe.rpartition("N.")
    return before, "." + after


def _cache_path(path: Path) -> str:
    """``importlib.util.cache_from_source(str(path))``, for a thousand files of few folders."""
    folder, _, name = str(path).rpartition(os.sep)
    stem, dot, suffix = name.rpartition(".")
    if not folder or not dot or "." in stem or suffix != "py":
        return importlib.util.cache_from_source(str(path))
    before, after = _cache_form(folder, sys.pycache_prefix)
    return f"{before}{stem}{after}"


_CHECKED_HASH_PYC = 0b11  # PEP 552 flags: hash-based, and the hash is checked on load
_PYC_HEADER = importlib.util.MAGIC_NUMBER + _CHECKED_HASH_PYC.to_bytes(4, "little")


def _compile_cached(path: Path, source: bytes) -> types.CodeType:
    """Compile ``source``, reusing a checked-hash ``.pyc`` in ``__pycache__`` (PEP 552).

    Keyed by the source's hash, not its mtime, so an edit in the same second can never run
    stale bytecode. Python's own loader reads these files too. ``PYTHONDONTWRITEBYTECODE``
    (``sys.dont_write_bytecode``) is honoured; a cache that cannot be written is skipped.
    """
    cached = _cache_path(path)
    header = _PYC_HEADER + importlib.util.source_hash(source)
    try:
        data = _read(cached)
    except OSError:
        data = b""
    if data.startswith(header):
        with contextlib.suppress(ValueError, EOFError, TypeError):
            code = marshal.loads(data[len(header) :])  # noqa: S302 - trusted as the .py is
            if isinstance(code, types.CodeType):
                return code
    code = compile(source, str(path), "exec", dont_inherit=True)
    if not sys.dont_write_bytecode:
        with contextlib.suppress(OSError):
            target = Path(cached)
            target.parent.mkdir(exist_ok=True)
            tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
            tmp.write_bytes(header + marshal.dumps(code))
            tmp.replace(target)
    return code


def _stem(path: Path) -> str:
    """``path.stem``, without pathlib's parsing for the usual ``NNN_name.py``."""
    name = path.name
    return name[:-3] if name.endswith(".py") and len(name) > 3 else path.stem


def _import_source(path: Path, source: bytes) -> types.ModuleType | Problem:
    """Run ``source`` as a fresh module with a unique name; ``sys.path`` stays untouched."""
    module_name = f"dopemux_update._migration_{next(_module_counter)}_{_stem(path)}"
    try:
        code = _compile_cached(path, source)
    except (SyntaxError, ValueError) as exc:
        line = f" (line {exc.lineno})" if isinstance(exc, SyntaxError) and exc.lineno else ""
        reason = exc.msg if isinstance(exc, SyntaxError) else str(exc)
        return Problem(path, f"cannot be compiled: {type(exc).__name__}: {reason}{line}")
    module = types.ModuleType(module_name)
    module.__file__ = str(path)
    # Registered while it runs, so that dataclasses and typing in the file can find it.
    sys.modules[module_name] = module
    try:
        exec(code, module.__dict__)  # noqa: S102 - running migration code is the purpose
    except BaseException as exc:  # any import-time error is a problem, even an exit
        if is_real_interrupt(exc):
            raise
        if isinstance(exc, SystemExit):
            return Problem(path, f"import failed: called sys.exit({shown(exc.code)})")
        return Problem(path, f"import failed: {exception_text(exc)}")
    finally:
        sys.modules.pop(module_name, None)
    return module


def _takes_one_argument(function: object) -> bool:
    """Whether ``function(project_root)`` binds; plain functions are checked on their code."""
    if isinstance(function, types.FunctionType):
        code = function.__code__
        if code.co_kwonlyargcount > len(function.__kwdefaults__ or {}):
            return False  # a keyword-only argument without a default
        required = code.co_argcount - len(function.__defaults__ or ())
        has_varargs = bool(code.co_flags & inspect.CO_VARARGS)
        return required <= 1 and (code.co_argcount >= 1 or has_varargs)
    try:
        inspect.signature(function).bind(Path())  # type: ignore[arg-type]
    except TypeError:
        return False
    except ValueError:
        return True  # no signature to inspect (a builtin); calling it will tell
    return True


_ASYNC_FLAGS = inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


def _is_async(function: object) -> bool:
    if type(function) is types.FunctionType:  # the usual case, read off its code at once
        return bool(function.__code__.co_flags & _ASYNC_FLAGS)
    return inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)


def _check_function(path: Path, module: types.ModuleType, name: str) -> object:
    function = getattr(module, name, None)
    if function is None:
        return Problem(path, f"{name} is missing")
    if not callable(function):
        return Problem(path, f"{name} is not a function")
    if _is_async(function):
        return Problem(path, f"{name} must be a plain function, not async")
    if not _takes_one_argument(function):
        return Problem(path, f"{name} must take exactly one positional argument (project_root)")
    return function


def _check_info(
    path: Path, module: types.ModuleType, transition: Transition, problems: list[Problem]
) -> Declared | MigrationInfo | None:
    raw = getattr(module, "MIGRATION_INFO", None)
    if raw is None:
        problems.append(Problem(path, "MIGRATION_INFO is missing"))
        return None
    if not isinstance(raw, dict):
        problems.append(Problem(path, f"MIGRATION_INFO must be a dict, not {type(raw).__name__}"))
        return None
    info: Declared | MigrationInfo | None = accept(raw)
    if info is None:  # not plainly valid: the model judges it
        info = _judged(path, raw, problems)
        if info is None:
            return None
    for key, expected in (
        ("version_from", transition.version_from),
        ("version_to", transition.version_to),
    ):
        declared = getattr(info, key)
        if cached_version(declared) != expected:
            problems.append(
                Problem(
                    path,
                    f"MIGRATION_INFO {key} is {declared!r} but its folder"
                    f" {transition.name} says {expected}",
                )
            )
    return info


def _judged(path: Path, raw: dict[object, object], problems: list[Problem]) -> MigrationInfo | None:
    """``MigrationInfo``'s verdict on ``raw``: the model, or None and its reasons in
    ``problems``."""
    from pydantic import ValidationError  # noqa: PLC0415 - only for a dict accept() left

    from .._core._info import MigrationInfo  # noqa: PLC0415 - as pydantic

    try:
        return MigrationInfo.model_validate(raw)
    except ValidationError as exc:
        problems.extend(Problem(path, reason) for reason in _describe(exc, MigrationInfo))
        return None


def _describe(exc: ValidationError, model: type[MigrationInfo]) -> Sequence[str]:
    reasons = []
    keys = tuple(model.model_fields)
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        top = str(error["loc"][0]) if error["loc"] else ""
        if error["type"] == "extra_forbidden":
            import difflib  # noqa: PLC0415 - only for a key MIGRATION_INFO does not have

            guess = difflib.get_close_matches(top, keys, n=1)
            hint = f" (did you mean {guess[0]!r}?)" if guess else ""
            reasons.append(f"MIGRATION_INFO has an unknown key {top!r}{hint}")
        elif error["type"] == "missing":
            reasons.append(f"MIGRATION_INFO is missing the key {key!r}")
        else:
            message = error["msg"].removeprefix("Value error, ")
            reasons.append(f"MIGRATION_INFO {key!r}: {message} (got {shown(error['input'])})")
    return reasons
