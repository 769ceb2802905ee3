"""The endpoint on two Ray nodes (a second raylet joined to the session's cluster on this
machine), one replica pinned to each, serving a policy checkpoint kept in a real S3-compatible
server (conftest's `bucket`) and sharing a real PostgreSQL store: what one replica writes
the other serves at once, a delete is seen by both, and a replica killed with SIGKILL in the
middle of a client's posts loses and duplicates none of its choices."""

import os
import signal
import threading
import time

import numpy as np
import pytest
import requests

pytestmark = pytest.mark.ray

PORT = 8124
DIM = 384


def embeddings(value: float, pairs: int = 1) -> dict:
    return {"chosen": [[value] * DIM] * pairs, "rejected": [[0.0] * DIM] * pairs}


@pytest.fixture(scope="module")
def two_replicas(ray_nodes, postgres_databases, bucket, tmp_path_factory):
    from conftest import upload_folder
    from ray import serve
    from test_serve import tiny_checkpoints

    from npalign.config import ServeConfig
    from npalign.serving import build_app

    second = ray_nodes.add_node(num_cpus=1, resources={"npalign_node_b": 1})
    ray_nodes.wait_for_nodes()
    local, _ = tiny_checkpoints(tmp_path_factory.mktemp("serve-cluster"))
    policy = upload_folder(local, bucket.replace("/runs?", "/serve-cluster/policy?"))
    store = postgres_databases()
    # Both nodes share this machine's address: one HTTP proxy, on the head, routes to both.
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": PORT})
    for name, node in (("a", "npalign_head"), ("b", "npalign_node_b")):
        config = ServeConfig(
            policy=policy,
            store=store,
            port=PORT,
            proxy_location="HeadOnly",
            replica_resources={node: 0.01},
            min_replicas=1,
            max_replicas=1,
            cpus_per_replica=0.25,
            max_context_pairs=4,
            max_new_tokens=4,
            default_new_tokens=2,
            max_prompt_tokens=64,
        )
        serve.run(build_app(config), name=f"node-{name}", route_prefix=f"/{name}")
    base = f"http://127.0.0.1:{PORT}"
    yield {"a": f"{base}/a", "b": f"{base}/b", "store": store, "policy": policy}
    serve.shutdown()
    ray_nodes.remove_node(second)


def test_the_two_replicas_run_on_two_nodes(two_replicas):
    from npalign.serving import live_replicas

    placed = live_replicas()
    assert set(placed) == {"node-a", "node-b"}
    assert placed["node-a"]["node"] != placed["node-b"]["node"]


def test_a_user_added_through_one_replica_is_served_by_the_other(two_replicas):
    a, b = two_replicas["a"], two_replicas["b"]
    added = requests.post(f"{a}/users/lea/choices", json={"context_embeddings": embeddings(1, 2)})
    assert added.status_code == 200, added.text
    assert requests.get(f"{b}/users/lea", timeout=30).json()["choices"] == 2
    reply = requests.post(f"{b}/generate", json={"prompt": "Hi", "user_id": "lea"}, timeout=120)
    assert reply.status_code == 200 and reply.json()["context_pairs"] == 2
    # b now holds lea's z; a change through a is what b uses next, not its cached z.
    requests.post(f"{a}/users/lea/choices", json={"context_embeddings": embeddings(2)})
    reply = requests.post(f"{b}/generate", json={"prompt": "Hi", "user_id": "lea"}, timeout=120)
    assert reply.json()["context_pairs"] == 3

    assert requests.delete(f"{a}/users/lea", timeout=30).status_code == 204
    for replica in (a, b):  # gone for both at once
        assert requests.get(f"{replica}/users/lea", timeout=30).status_code == 404
        body = {"prompt": "Hi", "user_id": "lea"}
        assert requests.post(f"{replica}/generate", json=body, timeout=60).status_code == 404
    # Created again through b with one choice: a serves the new user, not the old one's z.
    requests.post(f"{b}/users/lea/choices", json={"context_embeddings": embeddings(3)})
    reply = requests.post(f"{a}/generate", json={"prompt": "Hi", "user_id": "lea"}, timeout=120)
    assert reply.json()["context_pairs"] == 1


def test_a_replica_killed_during_posts_loses_and_duplicates_no_choice(two_replicas):
    """A client posts 200 choices, each with its own request id, to replica b and retries a
    failed post through a; b is SIGKILLed once 50 are answered. Afterwards the store holds each
    of the 200 exactly once. (Serve may hold the posts that reach b while it restarts, so a
    retry is not certain to happen.)"""
    from npalign.serving import live_replicas
    from npalign.stores.base import open_store

    a, b = two_replicas["a"], two_replicas["b"]
    posts, answered, quarter = 200, [], threading.Event()

    def post_all():
        for i in range(posts):
            body = {"context_embeddings": embeddings(float(i + 1)), "request_id": f"post-{i}"}
            for attempt in range(60):
                target = b if attempt == 0 else a
                try:
                    reply = requests.post(f"{target}/users/max/choices", json=body, timeout=30)
                    if reply.status_code == 200:
                        break
                except requests.RequestException:
                    pass
                time.sleep(0.5)
            else:
                raise AssertionError(f"post {i} never succeeded")
            answered.append(i)
            if len(answered) == posts // 4:
                quarter.set()

    victim = live_replicas()["node-b"]["pid"]
    client = threading.Thread(target=post_all)
    client.start()
    assert quarter.wait(timeout=120)
    os.kill(victim, signal.SIGKILL)
    at_kill = len(answered)
    client.join(timeout=300)
    assert not client.is_alive()
    assert at_kill < posts  # the kill landed while the client was posting

    state = open_store(two_replicas["store"]).get("max")
    assert sorted(state.chosen[:, 0].tolist()) == [float(i + 1) for i in range(posts)]
    assert np.all(state.rejected == 0)
    assert requests.get(f"{a}/users/max", timeout=30).json()["choices"] == posts
