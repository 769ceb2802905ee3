import os
import shutil
import tempfile

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
# No token auth for the loopback test cluster (and no token file left for a later `ray start`).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# The local S3 server's credentials (any will do; test_storage.py starts it), set before the Ray
# cluster starts so that its workers reach the run folders stored there too.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "npalign-test")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "npalign-test")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
# Built steer tasks and embeddings go to a fresh cache, never the user's.
os.environ["NPALIGN_CACHE"] = tempfile.mkdtemp(prefix="npalign-cache-")


@pytest.fixture(scope="session")
def ray_nodes():
    """One local Ray cluster for the whole test session (start-up costs seconds): a head node
    as a `ray start --head` would make it, to which `add_node` joins real raylets (a second
    node on this machine) for the tests that need two."""
    import ray
    from ray.cluster_utils import Cluster

    temp_dir = tempfile.mkdtemp(prefix="npalign-ray-")
    # Ray's default temp folder, where the head writes its address: this session's, not the
    # machine's /tmp/ray (a later plain ray.init() there must not find this cluster).
    os.environ["RAY_TMPDIR"] = temp_dir
    os.makedirs(os.path.join(temp_dir, "ray"))
    nodes = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "object_store_memory": 2 * 1024**3,
            "resources": {"npalign_head": 1},  # to pin a replica to the head node
            # Ray Train frees the workers of a run that Tune stops early through the state
            # API, which the dashboard serves: without it their CPUs leak and later sweep
            # trials hang.
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "temp_dir": os.path.join(temp_dir, "ray"),
        },
    )
    context = ray.init(address=nodes.address, log_to_driver=False)
    nodes.dashboard_url = f"http://{context.dashboard_url}"  # the job server, for ray job submit
    yield nodes
    ray.shutdown()
    nodes.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_cluster(ray_nodes):
    """The session's Ray, joined."""
    import ray

    return ray


@pytest.fixture(scope="session")
def postgres_server():
    """One real PostgreSQL server on 127.0.0.1 for the session (started in ~1 s); its URL."""
    from npalign.stores.local_postgres import local_postgres

    with local_postgres() as url:
        yield url


def new_database(server_url: str) -> str:
    """The URL of a fresh, empty database on a running server."""
    import uuid

    import psycopg

    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as db:
        db.execute(f"CREATE DATABASE {name}")
    return server_url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def postgres_databases(postgres_server):
    """Call it for the URL of a fresh, empty database on the session's server."""
    return lambda: new_database(postgres_server)


@pytest.fixture
def postgres_url(postgres_databases):
    """A fresh, empty database for one test."""
    return postgres_databases()
