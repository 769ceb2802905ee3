import os
import shutil
import tempfile

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
# No token auth for the loopback test cluster (and no token file left for a later `ray start`).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Built steer tasks and embeddings go to a fresh cache, never the user's.
os.environ["NPALIGN_CACHE"] = tempfile.mkdtemp(prefix="npalign-cache-")


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole test session (start-up costs seconds)."""
    import ray

    temp_dir = tempfile.mkdtemp(prefix="npalign-ray-")
    ray.init(
        num_cpus=2,
        # Ray Train frees the workers of a run that Tune stops early through the state API,
        # which the dashboard serves: without it their CPUs leak and later sweep trials hang.
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        log_to_driver=False,
        _temp_dir=temp_dir,
    )
    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)
