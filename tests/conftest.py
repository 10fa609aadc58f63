"""Shared fixtures: both anyio backends, migration folders written on the fly, tree digests."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import sys
import textwrap
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import structlog

if TYPE_CHECKING:
    from dopemux_update import BackupStore

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_INSTALLATION = REPO / "examples" / "installation"
EXAMPLE_MIGRATIONS = REPO / "migrations" / "examples"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def tree_digest(root: Path, *, exclude: tuple[str, ...] = (".dopemux/update",)) -> dict[str, Any]:
    """Every path under ``root`` with its kind, mode and content (symlinks not followed)."""
    found: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if any(rel == e or rel.startswith(e + "/") for e in exclude):
                continue
            info = path.lstat()
            mode = stat.S_IMODE(info.st_mode)
            if stat.S_ISLNK(info.st_mode):
                found[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                found[rel] = ("dir", mode)
            elif not stat.S_ISREG(info.st_mode):
                found[rel] = ("special", stat.S_IFMT(info.st_mode), mode)
            else:
                found[rel] = ("file", mode, hashlib.sha256(path.read_bytes()).hexdigest())
        dirnames[:] = [d for d in dirnames if not (Path(dirpath) / d).is_symlink()]
    return found


def stored_copy(backup: Path, rel: str) -> Path:
    """The stored copy (object) of file ``rel`` of the backup in folder ``backup``."""
    from dopemux_update import BackupStore

    store = BackupStore(backup.parent)
    manifest = store.read_manifest(backup.name)
    return store.stored_file(manifest, rel, manifest.decoded()[rel])


def as_older_format(backup: Path, version: int) -> None:
    """Turn the backup in folder ``backup`` into one of ``version`` (2, 3 or 4), as an older
    release wrote it: format 4 with entries as objects of the fields that are set; formats 2
    and 3 with its files copied under ``tree/``, hard-linked to the same file of the previous
    backup, if that one is in this layout too and holds it unchanged; a format 2 manifest has
    no owners, SQLite settings or MAC."""
    import xxhash

    from dopemux_update import BackupStore
    from dopemux_update._backup._manifest import sign_manifest
    from support.manifests import encoded, named

    store = BackupStore(backup.parent)
    if version < 4:
        _as_tree(store, backup)
    document = named((backup / "manifest.json").read_bytes())
    document["format"] = version
    if version < 4:
        document.pop("own_objects")
    if version == 2:
        for entry in document["entries"].values():
            for key in ("uid", "gid", "sqlite"):
                entry.pop(key, None)
    raw = encoded(document, rows=False)
    (backup / "manifest.json").write_bytes(raw)
    (backup / "manifest.xxh3").write_text(xxhash.xxh3_128_hexdigest(raw))
    if version == 2:
        (backup / "manifest.hmac").unlink()
    else:
        (backup / "manifest.hmac").write_bytes(sign_manifest(store.backups_dir, raw))


def _as_tree(store: BackupStore, backup: Path) -> None:
    """Copy the backup's stored files under its ``tree/``, as formats 2 and 3 held them."""
    manifest = store.read_manifest(backup.name)
    tree = backup / "tree"
    previous = store.backups_dir / (manifest.previous or "-") / "tree"
    tree.mkdir(mode=0o700)
    for rel, entry in sorted(manifest.decoded().items()):
        if entry.type == "dir":
            (tree / rel).mkdir(mode=0o700)
        elif entry.type in ("file", "sqlite"):
            stored = store.stored_file(manifest, rel, entry)
            older = previous / rel
            if older.is_file() and older.read_bytes() == stored.read_bytes():
                os.link(older, tree / rel)
            else:
                shutil.copyfile(stored, tree / rel)
                (tree / rel).chmod(0o600)


class MigrationWriter:
    """Writes migration files into a migrations folder, with sensible defaults."""

    def __init__(self, root: Path, calls: Path) -> None:
        self.root = root
        self.calls = calls
        root.mkdir(parents=True, exist_ok=True)

    def add(
        self,
        folder: str,
        filename: str,
        *,
        forward: str = "return True",
        backward: str = "return True",
        info: dict[str, Any] | None = None,
        drop_info_keys: tuple[str, ...] = (),
        source: str | None = None,
    ) -> Path:
        path = self.root / folder / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        if source is None:
            version_from, version_to = folder[1:].split("_to_v")
            meta: dict[str, Any] = {
                "version_from": version_from,
                "version_to": version_to,
                "description": f"test migration {filename}",
                "breaking_changes": False,
                "estimated_duration_seconds": 1,
                "requires_restart": [],
            }
            meta.update(info or {})
            for key in drop_info_keys:
                meta.pop(key, None)
            migration_id = f"{folder}/{Path(filename).stem}"
            source = (
                "from pathlib import Path\n\n"
                f"CALLS = Path({str(self.calls)!r})\n"
                f"ID = {migration_id!r}\n\n"
                "def _log(what):\n"
                "    with CALLS.open('a') as f:\n"
                "        f.write(what + ' ' + ID + '\\n')\n\n"
                "def migrate_forward(project_root):\n"
                "    _log('forward')\n"
                + textwrap.indent(textwrap.dedent(forward), "    ")
                + "\n\ndef migrate_backward(project_root):\n"
                "    _log('backward')\n"
                + textwrap.indent(textwrap.dedent(backward), "    ")
                + f"\n\nMIGRATION_INFO = {meta!r}\n"
            )
        path.write_text(source)
        return path

    def calls_made(self) -> list[str]:
        if not self.calls.exists():
            return []
        return self.calls.read_text().splitlines()


@pytest.fixture
def installation(tmp_path: Path) -> Path:
    """A small installation tree with a config file, a nested folder and a symlink."""
    root = tmp_path / "install"
    (root / "config" / "nested").mkdir(parents=True)
    (root / "config" / "app.yaml").write_text("# keep me\nlog_level: info\n")
    (root / "config" / "nested" / "deep.json").write_text('{"a": 1}\n')
    (root / "secret.env").write_text("TOKEN=abc\n")
    (root / "secret.env").chmod(0o600)
    (root / "link-to-app").symlink_to("config/app.yaml")
    (root / "empty").mkdir()
    (root / ".dopemux").mkdir()
    (root / ".dopemux" / "data.txt").write_text("service data\n")
    return root


@pytest.fixture
def migrations(tmp_path: Path) -> MigrationWriter:
    return MigrationWriter(tmp_path / "migrations", tmp_path / "calls.log")


@pytest.fixture
def example_copy(tmp_path: Path) -> Path:
    """A fresh copy of the sample installation at 0.1.0."""
    target = tmp_path / "example"
    shutil.copytree(EXAMPLE_INSTALLATION, target, symlinks=True)
    return target


@pytest.fixture
def gate() -> Iterator[types.SimpleNamespace]:
    """Thread events a migration can import as ``dopemux_test_gate`` to coordinate with a test."""
    namespace = types.SimpleNamespace(started=threading.Event(), release=threading.Event())
    sys.modules["dopemux_test_gate"] = namespace  # type: ignore[assignment]
    try:
        yield namespace
    finally:
        namespace.release.set()
        del sys.modules["dopemux_test_gate"]


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """The command line configures structlog globally; give every test the defaults back."""
    yield
    structlog.reset_defaults()


class FakeDocker:
    """A fake ``docker`` first on ``PATH`` (see ``tests/support/fake_docker.py``)."""

    def __init__(self, folder: Path) -> None:
        self.bin = folder / "bin"
        self.bin.mkdir(parents=True)
        self.state_path = folder / "docker-state.json"
        self.log_path = folder / "docker-calls.log"
        self.log_path.write_text("")
        script = self.bin / "docker"
        source = (REPO / "tests" / "support" / "fake_docker.py").read_text()
        script.write_text(f"#!{sys.executable}\n{source}")
        script.chmod(0o755)
        self.set(services={})

    def set(self, **state: Any) -> None:
        import json

        self.state_path.write_text(json.dumps(state))

    def state(self) -> dict[str, Any]:
        import json

        result: dict[str, Any] = json.loads(self.state_path.read_text())
        return result

    def calls(self) -> list[str]:
        """The arguments of every call, in order."""
        return [line.split("\t", 1)[1] for line in self.log_path.read_text().splitlines()]

    def calls_with_cwd(self) -> list[tuple[str, str]]:
        """``(working directory, arguments)`` of every call, in order."""
        return [
            (cwd, args)
            for cwd, args in (
                line.split("\t", 1) for line in self.log_path.read_text().splitlines()
            )
        ]

    def env(self) -> dict[str, str]:
        return {
            "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "FAKE_DOCKER_STATE": str(self.state_path),
            "FAKE_DOCKER_LOG": str(self.log_path),
        }


@pytest.fixture
def fake_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeDocker:
    """A fake ``docker`` executable first on ``PATH``, for this test and its subprocesses."""
    fake = FakeDocker(tmp_path / "fake-docker")
    for key, value in fake.env().items():
        monkeypatch.setenv(key, value)
    return fake
