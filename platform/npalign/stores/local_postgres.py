"""A throwaway PostgreSQL server on 127.0.0.1 for tests, benchmarks and trying the networked
store on one machine: `with local_postgres() as url:` starts one in a fresh folder (~2 s) and
stops and removes it at the end. Needs the server binaries (Debian: apt-get install postgresql).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


def server_binaries() -> Path:
    """The folder holding initdb and pg_ctl (newest installed version first)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    on_path = shutil.which("initdb")
    if not found and on_path is None:
        raise FileNotFoundError(
            "no PostgreSQL server found (initdb): install it, e.g. apt-get install -y postgresql"
        )
    return Path(found[0] if found else on_path).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_postgres(port: int | None = None) -> Iterator[str]:
    """Yields the URL of a new, empty server (database `postgres`, user `npalign`, no
    password, loopback only). The server refuses to run as root: as root it runs as the
    `postgres` system user."""
    binaries = server_binaries()
    port = port or free_port()
    folder = Path(tempfile.mkdtemp(prefix="npalign-postgres-"))
    as_owner: list[str] = []
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        as_owner = ["runuser", "-u", "postgres", "--"]

    def run(*command: str) -> None:
        subprocess.run([*as_owner, *command], check=True, capture_output=True, text=True)

    data = folder / "data"
    try:
        run(str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "npalign", "-N")
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        pg_ctl = str(binaries / "pg_ctl")
        run(pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start")
        try:
            yield f"postgresql://npalign@127.0.0.1:{port}/postgres"
        finally:
            run(pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop")
    except subprocess.CalledProcessError as error:
        log = folder / "log"
        detail = log.read_text()[-2000:] if log.exists() else error.stderr
        raise RuntimeError(f"local PostgreSQL failed: {error.cmd}\n{detail}") from error
    finally:
        shutil.rmtree(folder, ignore_errors=True)
