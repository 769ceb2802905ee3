"""Load on the steerable endpoint: a real local Ray Serve instance on this machine, clients over
HTTP, every client a different stored user (each known by --context choices, as embeddings).

1. Latency and throughput vs the number of concurrent clients (closed loop: each client sends
   its next request when the last one is answered): p50 / p95 / p99, requests/s, errors.
2. Dynamic batching at concurrency 8: the same load with `max_batch_size` 8 and with 1 (one
   replica each, side by side in this run). Goal: throughput ≥ 2×.
3. Bad input under load: --mixed requests at concurrency 8, a share of them malformed (every
   kind the endpoint rejects, in random order between good ones: malformed JSON, blank or
   over-long prompts, a prompt over max_prompt_tokens only inside the chat template, 1e39 (inf
   as float32), NaN, wrong or huge embedding widths, 1,000 choices, a 10 MB body, no token,
   another user's token, ...). Goal: no 5xx at all, every malformed request a 4xx, every good
   one a 200 — also those batched together with a bad one.
4. Autoscaling: min 1, max 2 replicas (1 CPU each, all this machine has), target 2 ongoing
   requests; concurrency 8 for --scale-seconds; the number of running replicas over time.
5. A flood well past capacity: --flood clients with no pause for --flood-seconds against one
   replica holding 8 requests at work and 16 queued. Goal: the excess answered 503 with
   Retry-After at once, requests still served, the replica's memory bounded (peak RSS
   reported) and no replica restart.

The policy is --policy (a trained NP-DPO checkpoint) or, by default, an *untrained* NP-DPO on the
full SmolLM2-135M-Instruct with an untrained NP-BTL: serving cost does not depend on the values
of the adapters (same shapes, same compute), and this way the benchmark needs no training.

  .venv/bin/python benchmarks/serve_load.py --out benchmarks/serve_load.json   # ~10 min here
"""

from __future__ import annotations

import argparse
import json
import logging
import queue
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

from npalign.config import ServeConfig
from npalign.files import write_json

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("serve_load")
PROMPT = "What happened in this news story? A bushfire closed the main highway on Sunday."
ADMIN = "serve-load-admin-token-0001"
USER0 = "serve-load-user-token-0001"  # may act for load-0 only
HEADERS = {"Authorization": f"Bearer {ADMIN}"}


def admin_session() -> requests.Session:
    session = requests.Session()
    session.headers.update(HEADERS)
    return session


def untrained_checkpoints(folder: Path) -> tuple[str, str]:
    """(policy, reward) checkpoint folders of the default shapes, at initialisation."""
    import torch

    from npalign.config import EmbedConfig, ModelConfig, PolicyConfig
    from npalign.models.policy import build_policy, save_policy
    from npalign.models.reward import build_reward_model, save_reward_model

    dim = 384  # MiniLM, the default context embedding
    config = PolicyConfig()
    policy, _ = build_policy(config, dim)
    state = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    save_policy(folder / "policy", config, EmbedConfig(), dim, True, state)
    torch.manual_seed(0)
    model = ModelConfig(hidden_dim=config.hidden_dim, latent_dim=config.latent_dim)
    reward = build_reward_model("npbtl", model, dim)
    save_reward_model(folder / "reward", "npbtl", model, dim, reward.state_dict())
    return str(folder / "policy"), str(folder / "reward")


def store_users(url: str, count: int, context: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    users = []
    for i in range(count):
        body = {
            "context_embeddings": {
                "chosen": rng.normal(size=(context, 384)).round(4).tolist(),
                "rejected": rng.normal(size=(context, 384)).round(4).tolist(),
            }
        }
        reply = requests.post(
            f"{url}/users/load-{i}/choices", json=body, headers=HEADERS, timeout=120
        )
        reply.raise_for_status()
        users.append(f"load-{i}")
    return users


def percentiles(latencies: list[float]) -> dict[str, float]:
    values = np.asarray(latencies) * 1000
    return {f"p{q}_ms": float(np.percentile(values, q)) for q in (50, 95, 99)}


def closed_loop(url: str, users: list[str], per_client: int, new_tokens: int) -> dict:
    """len(users) clients, each sending `per_client` requests one after the other."""
    results: list[tuple[float, int]] = []
    lock = threading.Lock()

    def client(user: str) -> None:
        session = admin_session()
        body = {"prompt": PROMPT, "user_id": user, "max_new_tokens": new_tokens}
        for _ in range(per_client):
            started = time.perf_counter()
            status = session.post(f"{url}/generate", json=body, timeout=600).status_code
            with lock:
                results.append((time.perf_counter() - started, status))

    started = time.perf_counter()
    with ThreadPoolExecutor(len(users)) as pool:
        list(pool.map(client, users))
    seconds = time.perf_counter() - started
    ok = [latency for latency, status in results if status == 200]
    return {
        "clients": len(users),
        "requests": len(results),
        "errors": sum(status != 200 for _, status in results),
        "seconds": seconds,
        "requests_per_s": len(ok) / seconds,
        "new_tokens_per_s": len(ok) * new_tokens / seconds,
        **percentiles(ok),
    }


def malformed_kinds(user: str) -> list[tuple[str, str, object, dict]]:
    """(method, path, body, headers) of requests the endpoint must answer with a 4xx; a str
    body is sent as raw bytes (not JSON-encoded)."""
    pair = {"prompt": "Q?", "chosen": "Short.", "rejected": "A much longer answer."}
    vectors = {"chosen": [[0.1] * 384], "rejected": [[0.0] * 384]}
    nan_vectors = {**vectors, "chosen": [[float("nan")] * 384]}
    inf_vectors = {**vectors, "chosen": [[1e39] * 384]}  # finite as JSON, inf as float32
    wide = {"chosen": [[0.0] * 20_000], "rejected": [[0.0] * 20_000]}
    # Under max_prompt_tokens (512) counted raw, over it inside the chat template.
    template_overflow = "word " * 500
    generate = {"prompt": "Hi", "user_id": user}
    as_user0 = {"Authorization": f"Bearer {USER0}"}
    kinds = [
        ("POST", "/generate", "{not json"),
        ("POST", "/generate", {"prompt": 7, "user_id": user}),
        ("POST", "/generate", {"user_id": user}),
        ("POST", "/generate", {"prompt": "Hi"}),
        ("POST", "/generate", {"prompt": "", "user_id": user}),
        ("POST", "/generate", {"prompt": "Hi", "user_id": "nobody-at-all"}),
        ("POST", "/generate", {"prompt": "Hi", "choices": []}),
        ("POST", "/generate", {"prompt": "Hi", "user_id": user, "choices": [pair]}),
        ("POST", "/generate", {"prompt": "Hi", "choices": [pair] * 40}),
        ("POST", "/generate", {"prompt": "word " * 600, "user_id": user}),
        ("POST", "/generate", {"prompt": "Hi", "user_id": user, "max_new_tokens": 100_000}),
        ("POST", "/generate", {"prompt": "Hi", "user_id": user, "max_new_tokens": -1}),
        ("POST", "/generate", {"prompt": "Hi", "user_id": user, "top_k": 3}),
        (
            "POST",
            "/generate",
            {"prompt": "Hi", "context_embeddings": {"chosen": [[1.0]], "rejected": [[0.0]]}},
        ),
        # NaN is not JSON: requests refuses to encode it, so the raw text json.dumps writes.
        ("POST", "/generate", json.dumps({"prompt": "Hi", "context_embeddings": nan_vectors})),
        ("POST", "/score", {"prompt": "Hi", "responses": [], "user_id": user}),
        ("POST", "/score", {"prompt": "Hi", "responses": ["a"], "user_id": "nobody-at-all"}),
        ("POST", "/users/someone/choices", {}),
        ("POST", "/users/someone/choices", {"choices": [pair], "context_embeddings": vectors}),
        ("GET", "/users/nobody-at-all", None),
        ("DELETE", "/users/nobody-at-all", None),
        ("POST", "/generate", {"prompt": "   ", "user_id": user}),
        ("POST", "/generate", {"prompt": template_overflow, "user_id": user}),
        ("POST", "/generate", {"prompt": "Hi", "context_embeddings": inf_vectors}),
        ("POST", "/users/someone/choices", {"context_embeddings": inf_vectors}),
        ("POST", "/generate", {"prompt": "Hi", "context_embeddings": wide}),
        ("POST", "/generate", {"prompt": "Hi", "choices": [pair] * 1000}),
        ("POST", "/generate", "x" * 10_000_000),
    ]
    return [
        *[(method, path, body, HEADERS) for method, path, body in kinds],
        ("POST", "/generate", generate, {}),  # no token: 401
        ("POST", "/generate", {**generate, "user_id": "load-1"}, as_user0),  # another's: 403
        ("DELETE", "/users/load-1", None, as_user0),
    ]


def mixed_load(url: str, users: list[str], total: int, share: float, clients: int) -> dict:
    """`total` requests, a `share` of them malformed, sent by `clients` threads from one queue."""
    rng = np.random.default_rng(0)
    kinds = malformed_kinds(users[0])
    work: queue.Queue = queue.Queue()
    for i in range(total):
        if rng.random() < share:
            work.put(("bad", kinds[i % len(kinds)]))
        else:
            body = {"prompt": PROMPT, "user_id": users[i % len(users)], "max_new_tokens": 4}
            work.put(("good", ("POST", "/generate", body, HEADERS)))
    statuses: dict[str, list[int]] = {"good": [], "bad": []}
    lock = threading.Lock()

    def client() -> None:
        session = requests.Session()
        while True:
            try:
                label, (method, path, body, headers) = work.get_nowait()
            except queue.Empty:
                return
            if isinstance(body, str):
                headers = {**headers, "content-type": "application/json"}
                reply = session.request(method, url + path, data=body, headers=headers, timeout=600)
            else:
                reply = session.request(method, url + path, json=body, headers=headers, timeout=600)
            with lock:
                statuses[label].append(reply.status_code)

    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()  # a client that failed (not the server) fails the benchmark
    every = statuses["good"] + statuses["bad"]
    return {
        "requests": len(every),
        "malformed": len(statuses["bad"]),
        "kinds": len(kinds),
        "status_5xx": sum(s >= 500 for s in every),
        "malformed_4xx": sum(400 <= s < 500 for s in statuses["bad"]),
        "good_200": sum(s == 200 for s in statuses["good"]),
        "good": len(statuses["good"]),
        "statuses": {str(s): every.count(s) for s in sorted(set(every))},
    }


def running_replicas(app: str = "npalign") -> int:
    from ray import serve

    status = serve.status().applications[app].deployments["SteerableEndpoint"]
    return int(status.replica_states.get("RUNNING", 0))


def autoscaling_run(url: str, users: list[str], seconds: float, new_tokens: int) -> dict:
    """Concurrency len(users) for `seconds`, replicas polled every second."""
    stop = threading.Event()
    served = []

    def client(user: str) -> None:
        session = admin_session()
        body = {"prompt": PROMPT, "user_id": user, "max_new_tokens": new_tokens}
        while not stop.is_set():
            if session.post(f"{url}/generate", json=body, timeout=600).status_code == 200:
                served.append(time.perf_counter())

    started = time.perf_counter()
    timeline = []
    with ThreadPoolExecutor(len(users)) as pool:
        for user in users:
            pool.submit(client, user)
        while time.perf_counter() - started < seconds:
            timeline.append((time.perf_counter() - started, running_replicas()))
            time.sleep(1)
        stop.set()
    scaled = [t for t, n in timeline if n > timeline[0][1]]
    return {
        "seconds": seconds,
        "clients": len(users),
        "replicas_start": timeline[0][1],
        "replicas_max": max(n for _, n in timeline),
        "scaled_up_after_s": scaled[0] if scaled else None,
        "requests_served": len(served),
        "timeline": timeline,
    }


def rss_mb(pid: int) -> float:
    """Resident memory of a process (Linux /proc), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for pid {pid}")


def flood(url: str, users: list[str], clients: int, seconds: float, new_tokens: int) -> dict:
    """`clients` threads sending /generate back to back for `seconds`, the replica's resident
    memory sampled every 0.2 s."""
    from npalign.serving import live_replicas

    before = live_replicas()["npalign"]
    stop = threading.Event()
    statuses: list[int] = []
    retry_after: list[str | None] = []
    served_latency: list[float] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        session = admin_session()
        body = {"prompt": PROMPT, "user_id": users[i % len(users)], "max_new_tokens": new_tokens}
        while not stop.is_set():
            started = time.perf_counter()
            reply = session.post(f"{url}/generate", json=body, timeout=600)
            with lock:
                statuses.append(reply.status_code)
                if reply.status_code == 503:
                    retry_after.append(reply.headers.get("Retry-After"))
                elif reply.status_code == 200:
                    served_latency.append(time.perf_counter() - started)

    rss = [rss_mb(before["pid"])]
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client, i) for i in range(clients)]
        while time.perf_counter() - started < seconds:
            rss.append(rss_mb(before["pid"]))
            time.sleep(0.2)
        stop.set()
        for future in futures:
            future.result()
    after = live_replicas()["npalign"]
    return {
        "clients": clients,
        "seconds": seconds,
        "requests": len(statuses),
        "statuses": {str(c): statuses.count(c) for c in sorted(set(statuses))},
        "served": statuses.count(200),
        "served_per_s": statuses.count(200) / seconds,
        "refused_503": statuses.count(503),
        "refused_with_retry_after": sum(r is not None for r in retry_after),
        "other_statuses": sum(c not in (200, 503) for c in statuses),
        "rss_mb_start": rss[0],
        "rss_mb_peak": max(rss),
        "replica_restarts": after["restarts"] - before["restarts"],
        "same_replica_process": after["pid"] == before["pid"],
        **percentiles(served_latency or [0.0]),
    }


def plot(levels: list[dict], unbatched: dict, scaling: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from npalign.evaluation.accuracy import save_plot

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    clients = [r["clients"] for r in levels]
    for q in (50, 95, 99):
        left.plot(clients, [r[f"p{q}_ms"] / 1000 for r in levels], marker="o", label=f"p{q}")
    left.scatter(
        [unbatched["clients"]], [unbatched["p50_ms"] / 1000], marker="x", label="p50, no batching"
    )
    left.set_xlabel("concurrent clients")
    left.set_ylabel("latency (s)")
    left.set_xticks(clients)
    left.legend()
    times, replicas = zip(*scaling["timeline"], strict=True)
    right.step(times, replicas, where="post")
    right.set_xlabel("seconds under load (8 clients)")
    right.set_ylabel("running replicas")
    right.set_yticks(range(1, max(replicas) + 1))
    save_plot(fig, right, path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--policy", help="NP-DPO checkpoint (default: untrained, full SmolLM2)")
    parser.add_argument("--reward", help="NP-BTL checkpoint to go with --policy")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--per-client", type=int, default=6, help="requests per client and level")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--context", type=int, default=5, help="stored choices per user")
    parser.add_argument("--mixed", type=int, default=1000, help="requests in the bad-input phase")
    parser.add_argument("--malformed-share", type=float, default=0.3)
    parser.add_argument("--scale-seconds", type=float, default=120)
    parser.add_argument("--flood", type=int, default=200, help="clients in the flood phase")
    parser.add_argument("--flood-seconds", type=float, default=60)
    parser.add_argument("--port", type=int, default=8010)
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--plot", default=str(ROOT / "benchmarks/serve_load.png"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from npalign.serving import running_endpoint

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.policy:
            policy, reward = args.policy, args.reward
        else:
            policy, reward = untrained_checkpoints(folder)

        def settings(**kw) -> ServeConfig:
            fixed = {"min_replicas": 1, "max_replicas": 1, "max_batch_size": 8}
            return ServeConfig(
                policy=policy,
                reward=reward,
                store=str(folder / "users.db"),
                port=args.port,
                admin_token=ADMIN,
                user_tokens={"load-0": USER0},
                max_new_tokens=64,
                default_new_tokens=16,
                **{**fixed, **kw},
            )

        most = max(args.concurrency)
        log.info("phase 1: batching on, 1 replica, clients %s", args.concurrency)
        with running_endpoint(settings()) as url:
            users = store_users(url, most, args.context)
            closed_loop(url, users[:2], 1, args.new_tokens)  # warm-up
            levels = []
            for n in args.concurrency:
                levels.append(closed_loop(url, users[:n], args.per_client, args.new_tokens))
                log.info("%d clients: %s", n, levels[-1])
            log.info(
                "phase 3: %d requests, %.0f%% malformed", args.mixed, 100 * args.malformed_share
            )
            mixed = mixed_load(url, users, args.mixed, args.malformed_share, most)
            log.info("mixed: %s", mixed)
        log.info("phase 2: batching off (max_batch_size 1), %d clients", most)
        with running_endpoint(settings(max_batch_size=1)) as url:
            closed_loop(url, users[:2], 1, args.new_tokens)
            unbatched = closed_loop(url, users[:most], args.per_client, args.new_tokens)
            log.info("unbatched: %s", unbatched)
        log.info("phase 4: autoscaling 1..2 replicas, %d clients", most)
        with running_endpoint(settings(max_replicas=2, target_ongoing_requests=2)) as url:
            closed_loop(url, users[:1], 1, args.new_tokens)
            scaling = autoscaling_run(url, users[:most], args.scale_seconds, args.new_tokens)
            log.info("autoscaling: max %d replicas", scaling["replicas_max"])
        log.info("phase 5: a flood of %d clients for %.0f s", args.flood, args.flood_seconds)
        bounded = settings(max_ongoing_requests=8, max_queued_requests=16)
        with running_endpoint(bounded) as url:
            closed_loop(url, users[:1], 1, args.new_tokens)
            flooded = flood(url, users, args.flood, args.flood_seconds, args.new_tokens)
            log.info("flood: %s", flooded)
    batched = next(r for r in levels if r["clients"] == most)
    ratio = batched["requests_per_s"] / unbatched["requests_per_s"]
    minutes = (time.perf_counter() - started) / 60

    print(
        f"\nSteerable endpoint, {'trained' if args.policy else 'untrained'} NP-DPO on SmolLM2, "
        f"{args.new_tokens} new tokens per request, 1 replica (1 CPU, 1 torch thread):"
    )
    print(f"{'clients':>8} {'req/s':>7} {'tok/s':>7} {'p50 s':>7} {'p95 s':>7} {'p99 s':>7} errors")
    for r in [*levels, {**unbatched, "clients": f"{most} nb"}]:
        print(
            f"{r['clients']:>8} {r['requests_per_s']:7.2f} {r['new_tokens_per_s']:7.1f} "
            f"{r['p50_ms'] / 1000:7.2f} {r['p95_ms'] / 1000:7.2f} {r['p99_ms'] / 1000:7.2f} "
            f"{r['errors']:6d}"
        )
    print("(nb: no batching, max_batch_size 1)")
    checks = {
        f"batching ≥ 2× throughput at {most} clients": {"ratio": ratio, "pass": ratio >= 2},
        "no 5xx among mixed requests, every one answered": {
            "count_5xx": mixed["status_5xx"],
            "answered": mixed["requests"],
            "sent": args.mixed,
            "pass": mixed["status_5xx"] == 0 and mixed["requests"] == args.mixed,
        },
        "every malformed request a 4xx": {
            "answered_4xx": mixed["malformed_4xx"],
            "malformed": mixed["malformed"],
            "pass": mixed["malformed_4xx"] == mixed["malformed"],
        },
        "every good request a 200": {
            "ok": mixed["good_200"],
            "good": mixed["good"],
            "pass": mixed["good_200"] == mixed["good"],
        },
        "a flood: the excess refused with 503 + Retry-After, requests still served": {
            "refused_503": flooded["refused_503"],
            "with_retry_after": flooded["refused_with_retry_after"],
            "served": flooded["served"],
            "other_statuses": flooded["other_statuses"],
            "pass": flooded["refused_503"] > 0
            and flooded["refused_with_retry_after"] == flooded["refused_503"]
            and flooded["served"] > 0
            and flooded["other_statuses"] == 0,
        },
        "the flooded replica neither restarted nor grew without bound": {
            "restarts": flooded["replica_restarts"],
            "rss_mb_start": flooded["rss_mb_start"],
            "rss_mb_peak": flooded["rss_mb_peak"],
            "pass": flooded["replica_restarts"] == 0
            and flooded["same_replica_process"]
            and flooded["rss_mb_peak"] < 2 * flooded["rss_mb_start"],
        },
        "autoscaled to 2 replicas under load": {
            "replicas_max": scaling["replicas_max"],
            "after_s": scaling["scaled_up_after_s"],
            "pass": scaling["replicas_max"] == 2,
        },
    }
    print(
        f"\nBatching: {batched['requests_per_s']:.2f} vs {unbatched['requests_per_s']:.2f} req/s "
        f"→ {ratio:.2f}× (goal ≥ 2)"
    )
    print(
        f"Mixed load: {mixed['requests']} requests, {mixed['malformed']} malformed "
        f"({mixed['kinds']} kinds): statuses {mixed['statuses']}"
    )
    print(
        f"Autoscaling: {scaling['replicas_start']} → {scaling['replicas_max']} replicas "
        f"(after {scaling['scaled_up_after_s']} s), {scaling['requests_served']} requests "
        f"served in {scaling['seconds']:.0f} s"
    )
    print(
        f"Flood: {flooded['clients']} clients for {flooded['seconds']:.0f} s: statuses "
        f"{flooded['statuses']}, {flooded['served_per_s']:.2f} served/s (p50 "
        f"{flooded['p50_ms'] / 1000:.2f} s), replica RSS {flooded['rss_mb_start']:.0f} → peak "
        f"{flooded['rss_mb_peak']:.0f} MiB, {flooded['replica_restarts']} restarts"
    )
    for name, check in checks.items():
        print(f"{'PASS' if check['pass'] else 'FAIL'}  {name}: {check}")
    print(f"total {minutes:.1f} min")
    plot(levels, unbatched, scaling, Path(args.plot))
    print(f"plot: {args.plot}")
    if args.out:
        write_json(
            args.out,
            {
                "settings": {k: v for k, v in vars(args).items() if k not in ("out", "plot")},
                "levels": levels,
                "unbatched": unbatched,
                "batching_ratio": ratio,
                "mixed": mixed,
                "autoscaling": scaling,
                "flood": flooded,
                "checks": checks,
                "minutes": minutes,
            },
        )


if __name__ == "__main__":
    main()
