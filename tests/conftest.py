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


@pytest.fixture(scope="session")
def postgres_server():
    """One real PostgreSQL server on 127.0.0.1 for the session (started in ~1 s); its URL."""
    from npalign.stores.local_postgres import local_postgres

    with local_postgres() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty database on the session's server for one test."""
    import uuid

    import psycopg

    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as db:
        db.execute(f"CREATE DATABASE {name}")
    return postgres_server.rsplit("/", 1)[0] + "/" + name
