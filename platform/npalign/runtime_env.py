"""The Ray runtime environment that carries a checkout's code to every node of a cluster.

A job submitted with only `--working-dir .` runs its driver in a copy of the checkout, but its
workers import `npalign` from each node's own install: an edited library would not reach them.
Shipped as a `py_module`, `platform/npalign` goes ahead of any installed copy on the path of the
driver and of every task and actor of the job (Ray Train workers, Ray Data actors, Serve
replicas), so they all run the submitted code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Never uploaded (Ray refuses working dirs over 500 MiB). Ray matches these in the py_module
# too, each relative to its own folder, so a name the package also uses (its data/ subpackage)
# cannot be listed: the checkout's .venv/, runs/ and data/ stay out through its .gitignore, which
# Ray reads for the working dir only.
EXCLUDES = [".git/", "**/__pycache__/", "*.pyc"]


def code_runtime_env(root: Path, env_vars: dict[str, str] | None = None) -> dict[str, Any]:
    """`root` (a checkout: configs/, jobs/, ...) as the job's working directory and its
    `platform/npalign` as a module every process of the job imports."""
    package = root / "platform" / "npalign"
    if not (package / "__init__.py").exists():
        raise FileNotFoundError(f"{root}: not an npalign checkout (no {package}/__init__.py)")
    return {
        "working_dir": str(root),
        "py_modules": [str(package)],
        # The library travels once, as the module; platform/ in the working dir is left out.
        "excludes": [*EXCLUDES, "/platform/"],
        "env_vars": dict(env_vars or {}),
    }
