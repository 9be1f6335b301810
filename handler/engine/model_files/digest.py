"""A model file's full content hash: what identifies it in cache keys and checks a download."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_of(path: Path, progress: bool = True) -> str:
    from tqdm import tqdm  # a progress bar for the command line; not on a cold start's import path

    digest = hashlib.sha256()
    with (
        path.open("rb") as f,
        tqdm(
            total=path.stat().st_size, unit="B", unit_scale=True, desc=f"sha256 {path.name}", disable=not progress
        ) as bar,
    ):
        while chunk := f.read(4 * 1024 * 1024):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()
