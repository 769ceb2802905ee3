"""Atomic file writes (a reader sees the old file or the whole new one, never half of one), the
cache folder for things built once and reused (steer task, embeddings, converted models), and
the one way a run folder is made."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def cache_dir(*parts: str) -> Path:
    """$NPALIGN_CACHE (default ~/.cache/npalign) joined with `parts`: outside the repository, so a
    fresh clone reuses what an earlier one built."""
    root = Path(os.environ.get("NPALIGN_CACHE") or Path.home() / ".cache" / "npalign")
    return root.joinpath(*parts)


def new_run_folder(output_dir: str | Path, name: str) -> Path:
    """output_dir/<name>-<timestamp>, created now; never an existing folder."""
    folder = Path(output_dir) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder.mkdir(parents=True, exist_ok=False)
    return folder
