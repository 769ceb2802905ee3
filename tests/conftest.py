import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
# No token auth for the loopback test cluster (and no token file left for a later `ray start`).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# The local S3 server's credentials (any will do; the `bucket` fixture starts it), set before the
# Ray cluster starts so that its workers reach the run folders stored there too.
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

    from npalign.stores.local_postgres import free_port

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
            # Not Ray's default 8265, which a Ray of the user's on this machine may hold.
            "dashboard_port": free_port(),
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


def upload_folder(local: Path, uri: str) -> str:
    """A local folder copied to `uri` (a bucket folder); that URI."""
    from pyarrow import fs

    from npalign.files import Location

    target = Location(uri)
    fs.copy_files(str(local), target.path, destination_filesystem=target.fs)
    return uri


@pytest.fixture(scope="session")
def bucket():
    """An S3 bucket on a real S3-compatible server (moto's server mode) on 127.0.0.1, started
    here; the URI of a folder in it."""
    import boto3

    from npalign.stores.local_postgres import free_port

    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline, "moto_server did not start"
                time.sleep(0.2)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket="npalign"
        )
        yield f"s3://npalign/runs?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    finally:
        server.terminate()
        server.wait()
