"""Restores against a hostile world: crafted manifests, odd trees, SQLite that fights back."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import xxhash

from dopemux_update._sparse import copy_sparse


@pytest.mark.parametrize("hashed", [True, False])
def test_copy_sparse_writes_only_data_and_keeps_holes(tmp_path: Path, hashed: bool) -> None:
    source = tmp_path / "sparse"
    with source.open("wb") as handle:
        handle.truncate(64 << 20)
        handle.seek(8 << 20)
        handle.write(b"middle")
        handle.seek((64 << 20) - 5)
        handle.write(b"end!\n")
    copy = tmp_path / "copy"
    digest = xxhash.xxh3_128()
    src = os.open(source, os.O_RDONLY)
    dst = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        copy_sparse(src, dst, source.stat().st_size, digest=digest if hashed else None)
    finally:
        os.close(src)
        os.close(dst)
    assert copy.read_bytes() == source.read_bytes()
    if hashed:
        assert digest.hexdigest() == xxhash.xxh3_128_hexdigest(source.read_bytes())
    assert copy.stat().st_blocks * 512 < 1 << 20
