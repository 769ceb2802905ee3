"""jobs/submit.py against the session cluster's real job server: the driver and the workers of
a submitted job import the library from the submitted checkout, not from the installed one."""

import importlib.util
import shutil
import sys
import uuid
from pathlib import Path

import pytest

from npalign.runtime_env import code_runtime_env

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.ray

PROBE = """
import ray
import npalign
import npalign.data.episodes  # a subpackage named like the checkout's excluded data/

@ray.remote
def on_a_worker():
    import npalign
    return npalign.SHIPPED, npalign.__file__

import os

print("left out:", not any(os.path.exists(name) for name in (".venv", "runs", "data")))
print("driver:", npalign.SHIPPED, npalign.__file__)
print("worker:", *ray.get(on_a_worker.remote()))
"""


def test_a_submitted_job_runs_the_shipped_library_on_its_driver_and_workers(
    ray_nodes, tmp_path, capsys
):
    checkout = tmp_path / "checkout"
    shutil.copytree(
        ROOT / "platform" / "npalign",
        checkout / "platform" / "npalign",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    marker = uuid.uuid4().hex  # in the shipped copy only: the installed npalign lacks it
    with open(checkout / "platform" / "npalign" / "__init__.py", "a") as init:
        init.write(f"\nSHIPPED = {marker!r}\n")
    (checkout / "probe.py").write_text(PROBE)
    shutil.copy(ROOT / ".gitignore", checkout / ".gitignore")
    for ignored in (".venv", "runs", "data"):  # an environment, outputs, local datasets
        (checkout / ignored).mkdir()
        (checkout / ignored / "big.bin").write_bytes(b"0" * 1000)

    spec = importlib.util.spec_from_file_location("submit", ROOT / "jobs/submit.py")
    submit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(submit)
    argv = ["--address", ray_nodes.dashboard_url, "--root", str(checkout), "--", sys.executable]
    assert submit.main([*argv, "probe.py"]) == 0
    out = capsys.readouterr().out
    driver = next(line for line in out.splitlines() if line.startswith("driver:"))
    worker = next(line for line in out.splitlines() if line.startswith("worker:"))
    assert marker in driver and marker in worker
    assert "left out: True" in out
    assert str(ROOT) not in driver + worker  # not the checkout npalign is installed from


def test_the_runtime_env_ships_the_package_once_and_refuses_a_folder_without_it(tmp_path):
    env = code_runtime_env(ROOT, {"NPALIGN_CACHE": "/cache"})
    assert env["working_dir"] == str(ROOT)
    assert env["py_modules"] == [str(ROOT / "platform" / "npalign")]
    assert {".git/", "/platform/"} <= set(env["excludes"])
    assert env["env_vars"] == {"NPALIGN_CACHE": "/cache"}
    with pytest.raises(FileNotFoundError, match="not an npalign checkout"):
        code_runtime_env(tmp_path)
