"""Atomic file writes (a reader sees the old file or the whole new one, never half of one), the
cache folder for things built once and reused (steer task, embeddings, converted models), the
one way a run folder is made, and `Location`: a file or folder on this machine or behind a URI
(S3 and any filesystem pyarrow knows), so a run folder can live in cloud storage."""

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
def atomic_path(path: str | Path | Location) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.
    For a remote location: a local temporary file, uploaded in one request on success."""
    if isinstance(path, Location) and path.remote:
        with tempfile.TemporaryDirectory(prefix="npalign-") as tmp:
            yield Path(tmp) / path.name
            path.upload(Path(tmp) / path.name)
        return
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


def write_text(path: str | Path | Location, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path | Location, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def cache_dir(*parts: str) -> Path:
    """$NPALIGN_CACHE (default ~/.cache/npalign) joined with `parts`: outside the repository, so a
    fresh clone reuses what an earlier one built."""
    root = Path(os.environ.get("NPALIGN_CACHE") or Path.home() / ".cache" / "npalign")
    return root.joinpath(*parts)


def new_run_folder(output_dir: str | Path, name: str) -> Location:
    """output_dir/<name>-<timestamp> (output_dir: a path or a URI), created now; never an
    existing folder."""
    folder = Location(output_dir) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if folder.remote:
        if folder.exists():
            raise FileExistsError(f"{folder} exists already")
        folder.fs.create_dir(folder.path)
    else:
        Path(folder).mkdir(parents=True, exist_ok=False)
    return folder


class Location:
    """A file or folder named by a local path or by a URI of any filesystem pyarrow knows
    (s3://bucket/key, gs://bucket/key, hdfs://...; pyarrow's options may follow, e.g.
    s3://bucket/runs?endpoint_override=host:9000&scheme=http, else S3 takes its endpoint from
    AWS_ENDPOINT_URL). It joins with `/` like a Path; a local one is also os.PathLike. Pickled
    with its filesystem, so a Ray worker reaches it as the driver does."""

    def __init__(self, where: str | Path | Location):
        if isinstance(where, Location):
            self.__dict__.update(where.__dict__)
            return
        text = str(where)
        self.fs = None
        self.scheme, self.query = "", ""
        if "://" not in text or text.startswith("file://"):
            # Absolute: Ray's trials and workers run in other working directories.
            self.path = os.path.abspath(text.removeprefix("file://"))
            return
        from pyarrow import fs

        self.fs, path = fs.FileSystem.from_uri(text)
        self.path = path.rstrip("/")
        self.scheme = text.split("://", 1)[0]
        self.query = text.partition("?")[2]

    @property
    def remote(self) -> bool:
        return self.fs is not None

    def at(self, path: str) -> Location:
        """The location `path` on the same filesystem (a path that filesystem gave back)."""
        out = Location(self)
        out.path = path.rstrip("/") if self.remote else path
        return out

    def __truediv__(self, name: str) -> Location:
        return self.at(f"{self.path}/{name}" if self.remote else str(Path(self.path) / name))

    def __str__(self) -> str:
        if not self.remote:
            return self.path
        return f"{self.scheme}://{self.path}" + (f"?{self.query}" if self.query else "")

    __repr__ = __str__

    def __eq__(self, other) -> bool:
        return isinstance(other, Location) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __fspath__(self) -> str:
        if self.remote:
            raise TypeError(f"{self} is not on this machine: use its methods, or local_copy()")
        return self.path

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def exists(self) -> bool:
        if not self.remote:
            return Path(self.path).exists()
        from pyarrow import fs

        return self.fs.get_file_info(self.path).type != fs.FileType.NotFound

    def is_dir(self) -> bool:
        if not self.remote:
            return Path(self.path).is_dir()
        from pyarrow import fs

        return self.fs.get_file_info(self.path).type == fs.FileType.Directory

    def read_bytes(self) -> bytes:
        if not self.remote:
            return Path(self.path).read_bytes()
        with self.fs.open_input_stream(self.path) as stream:
            return stream.read()

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def upload(self, local: Path) -> None:
        """A local file's bytes as this object, in one request (a reader never sees a part)."""
        with self.fs.open_output_stream(self.path) as stream, open(local, "rb") as source:
            while chunk := source.read(1 << 24):
                stream.write(chunk)

    @contextlib.contextmanager
    def local_copy(self) -> Iterator[Path]:
        """This file on local disk for the block: itself, or a temporary download."""
        if not self.remote:
            yield Path(self.path)
            return
        with tempfile.TemporaryDirectory(prefix="npalign-") as tmp:
            target = Path(tmp) / self.name
            target.write_bytes(self.read_bytes())
            yield target
