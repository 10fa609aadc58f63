"""A small tmpfs: a disk that can really fill up, for the tests that need one."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def mounted_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (``8m``) on a new ``folder``, unmounted afterwards; skip the
    test where mounting is not permitted."""
    mount_program, umount_program = shutil.which("mount"), shutil.which("umount")
    if mount_program is None or umount_program is None:
        pytest.skip("no mount(8) here to make a small tmpfs")
    folder.mkdir()
    done = subprocess.run(
        [mount_program, "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr}")
    try:
        yield folder
    finally:
        subprocess.run([umount_program, "-l", str(folder)], check=False)
