"""The endpoint on a two-node Ray cluster sharing a PostgreSQL user store, on this machine: a
`ray start --head` node and a second `ray start` joining it (each in its own process group,
stopped at the end; nothing else of Ray on the machine is touched), a PostgreSQL server started
for the run on 127.0.0.1, and one replica pinned to each node (two Serve apps, /a and /b,
behind the head's proxy).

1. Shared state across nodes: --users users, each added through one replica, read and served
   through the other; deleted through one, then asked for through both. Goal: every read
   through the other node sees the write (no 404, the right number of choices), every delete is
   a 404 on both at once.
2. A replica killed with SIGKILL under load: --clients clients each post --posts choices (each
   with its own request id) to replica b, retrying a failed post through replica a; b's process
   is killed once a quarter of the posts are answered. Goal: every client finishes, and the
   store holds each client's choices exactly once (none lost, none duplicated).

The policy is an untrained NP-DPO on the full SmolLM2 (serving cost does not depend on the
adapters' values); contexts are sent as embeddings.

  .venv/bin/python benchmarks/serve_cluster.py --out benchmarks/serve_cluster.json   # ~3 min
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

from npalign.config import ServeConfig
from npalign.files import write_json
from npalign.serving import live_replicas

log = logging.getLogger("serve_cluster")
RAY = str(Path(sys.executable).parent / "ray")
NODES = {"a": "npalign_head", "b": "npalign_node_b"}  # app → the custom resource pinning it


def start_node(*args: str) -> subprocess.Popen:
    """`ray start --block ...` in its own process group: terminating it stops that node."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    return subprocess.Popen(
        [RAY, "start", "--block", "--disable-usage-stats", *args],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_node(node: subprocess.Popen) -> None:
    node.terminate()
    try:
        node.wait(timeout=60)
    except subprocess.TimeoutExpired:
        node.kill()
    try:
        os.killpg(node.pid, signal.SIGKILL)  # whatever of the node's processes is left
    except ProcessLookupError:
        pass


def wait_for_nodes(count: int, timeout: float = 120) -> None:
    import ray

    deadline = time.monotonic() + timeout
    while sum(n["Alive"] for n in ray.nodes()) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {count} Ray nodes after {timeout} s")
        time.sleep(1)


def embeddings(rng: np.random.Generator, pairs: int) -> dict:
    return {
        "chosen": rng.normal(size=(pairs, 384)).round(4).tolist(),
        "rejected": rng.normal(size=(pairs, 384)).round(4).tolist(),
    }


def shared_state(urls: dict[str, str], users: int) -> dict:
    """Write through one node, read and generate through the other, delete, ask both."""
    rng = np.random.default_rng(0)
    counts = {"reads_seen": 0, "generated": 0, "deleted_404_on_both": 0}
    for i in range(users):
        write, read = ("a", "b") if i % 2 == 0 else ("b", "a")
        user = f"cross-{i}"
        body = {"context_embeddings": embeddings(rng, 3)}
        added = requests.post(f"{urls[write]}/users/{user}/choices", json=body, timeout=60)
        added.raise_for_status()
        seen = requests.get(f"{urls[read]}/users/{user}", timeout=60)
        counts["reads_seen"] += seen.status_code == 200 and seen.json()["choices"] == 3
        ask = {"prompt": "What happened?", "user_id": user, "max_new_tokens": 4}
        reply = requests.post(f"{urls[read]}/generate", json=ask, timeout=300)
        counts["generated"] += reply.status_code == 200 and reply.json()["context_pairs"] == 3
        assert requests.delete(f"{urls[write]}/users/{user}", timeout=60).status_code == 204
        gone = [requests.get(f"{urls[k]}/users/{user}", timeout=60).status_code for k in urls]
        counts["deleted_404_on_both"] += gone == [404, 404]
    return {"users": users, **counts}


def killed_replica(urls: dict[str, str], store: str, clients: int, posts: int) -> dict:
    """Clients post to b (retrying through a) while b's replica is SIGKILLed."""
    from npalign.stores.base import open_store

    retries = [0] * clients
    answered = [0]
    quarter = threading.Event()
    lock = threading.Lock()

    def client(c: int) -> None:
        for i in range(posts):
            value = float(c * 1000 + i + 1)  # each choice recognisable in the store
            body = {
                "context_embeddings": {"chosen": [[value] * 384], "rejected": [[0.0] * 384]},
                "request_id": f"client-{c}-post-{i}",
            }
            for attempt in range(120):
                target = urls["b"] if attempt == 0 else urls["a"]
                try:
                    reply = requests.post(
                        f"{target}/users/killed-{c}/choices", json=body, timeout=60
                    )
                    if reply.status_code == 200:
                        with lock:
                            answered[0] += 1
                            if answered[0] >= clients * posts // 4:
                                quarter.set()
                        break
                except requests.RequestException:
                    pass
                retries[c] += 1
                time.sleep(0.5)
            else:
                raise RuntimeError(f"client {c}: post {i} never succeeded")

    victim = live_replicas()["node-b"]["pid"]
    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client, c) for c in range(clients)]
        quarter.wait(timeout=300)
        os.kill(victim, signal.SIGKILL)
        log.info("killed replica b (pid %d)", victim)
        for future in futures:
            future.result()
    reader = open_store(store)
    lost = duplicated = 0
    for c in range(clients):
        stored = reader.get(f"killed-{c}").chosen[:, 0].tolist()
        expected = [float(c * 1000 + i + 1) for i in range(posts)]
        lost += len(set(expected) - set(stored))
        duplicated += len(stored) - len(set(stored))
    return {
        "clients": clients,
        "posts_per_client": posts,
        "retried_posts": sum(retries),
        "lost": lost,
        "duplicated": duplicated,
        "replica_b_restarted": live_replicas().get("node-b", {}).get("pid") not in (None, victim),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=20, help="users in the shared-state phase")
    parser.add_argument("--clients", type=int, default=8, help="posting clients in the kill phase")
    parser.add_argument("--posts", type=int, default=100, help="choices each client posts")
    parser.add_argument("--ray-port", type=int, default=6391)
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import ray
    from ray import serve

    from npalign.serving import build_app
    from npalign.stores.local_postgres import local_postgres

    sys.path.insert(0, str(Path(__file__).parent))
    from serve_load import untrained_checkpoints

    started = time.perf_counter()
    address = f"127.0.0.1:{args.ray_port}"
    with tempfile.TemporaryDirectory() as tmp, local_postgres() as store:
        head = start_node(
            "--head",
            f"--port={args.ray_port}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2",
            f"--resources={json.dumps({NODES['a']: 1})}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--temp-dir={tmp}/ray",
        )
        second = None
        try:
            time.sleep(5)
            second = start_node(
                f"--address={address}",
                "--node-ip-address=127.0.0.1",
                "--num-cpus=1",
                f"--resources={json.dumps({NODES['b']: 1})}",
            )
            ray.init(address=address, log_to_driver=False)
            wait_for_nodes(2)
            policy, _ = untrained_checkpoints(Path(tmp))
            # Both nodes share this machine's address: one proxy, on the head, routes to both.
            serve.start(
                proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": args.port}
            )
            for app, resource in NODES.items():
                config = ServeConfig(
                    policy=policy,
                    store=store,
                    port=args.port,
                    proxy_location="HeadOnly",
                    replica_resources={resource: 0.01},
                    min_replicas=1,
                    max_replicas=1,
                    max_new_tokens=16,
                    default_new_tokens=4,
                )
                serve.run(build_app(config), name=f"node-{app}", route_prefix=f"/{app}")
            placed = live_replicas()
            urls = {app: f"http://127.0.0.1:{args.port}/{app}" for app in NODES}
            log.info("replicas: %s", placed)
            shared = shared_state(urls, args.users)
            log.info("shared state: %s", shared)
            killed = killed_replica(urls, store, args.clients, args.posts)
            log.info("killed replica: %s", killed)
            serve.shutdown()
            ray.shutdown()
        finally:
            for node in (second, head):
                if node is not None:
                    stop_node(node)
    minutes = (time.perf_counter() - started) / 60
    checks = {
        "one replica on each of two nodes": {
            "nodes": len({r["node"] for r in placed.values()}),
            "pass": len({r["node"] for r in placed.values()}) == 2,
        },
        "a write through one node is read and served through the other": {
            **{k: shared[k] for k in ("users", "reads_seen", "generated")},
            "pass": shared["reads_seen"] == shared["generated"] == shared["users"],
        },
        "a delete through one node is a 404 on both at once": {
            "deleted_404_on_both": shared["deleted_404_on_both"],
            "pass": shared["deleted_404_on_both"] == shared["users"],
        },
        "SIGKILL under load: no choice lost or duplicated, every retry succeeded": {
            **{k: killed[k] for k in ("retried_posts", "lost", "duplicated")},
            "pass": killed["lost"] == killed["duplicated"] == 0 and killed["retried_posts"] > 0,
        },
    }
    print("\nTwo Ray nodes on this machine, one replica each, a shared PostgreSQL store:")
    for name, check in checks.items():
        print(f"{'PASS' if check['pass'] else 'FAIL'}  {name}: {check}")
    print(f"total {minutes:.1f} min")
    if args.out:
        write_json(
            args.out,
            {
                "settings": {k: v for k, v in vars(args).items() if k != "out"},
                "replicas": placed,
                "shared_state": shared,
                "killed_replica": killed,
                "checks": checks,
                "minutes": minutes,
            },
        )


if __name__ == "__main__":
    main()
