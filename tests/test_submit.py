"""The runtime environment jobs/submit.py sends (a submitted job: tests/test_cluster_job.py)."""

from pathlib import Path

import pytest

from npalign.runtime_env import code_runtime_env

ROOT = Path(__file__).resolve().parents[1]


def test_the_runtime_env_ships_the_package_once_and_refuses_a_folder_without_it(tmp_path):
    env = code_runtime_env(ROOT, {"NPALIGN_CACHE": "/cache"})
    assert env["working_dir"] == str(ROOT)
    assert env["py_modules"] == [str(ROOT / "platform" / "npalign")]
    assert {".git/", "/platform/"} <= set(env["excludes"])
    assert env["env_vars"] == {"NPALIGN_CACHE": "/cache"}
    with pytest.raises(FileNotFoundError, match="not an npalign checkout"):
        code_runtime_env(tmp_path)
