"""Embedding pipeline throughput: texts/s with 1 and 2 encoder actors, and the cache hit on a rerun.

Takes the first --texts (prompt, response) texts of the steer task and embeds them through the
platform's Ray Data actor pool (embed.model from --model, default the packaged MiniLM) three
times, side by side in one run: 1 actor into an empty cache, 2 actors into another empty cache,
then 2 actors again into the second cache (every text cached: nothing should be embedded).

  .venv/bin/python benchmarks/embedding_throughput.py --out benchmarks/embedding_throughput.json
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time

from npalign.config import EmbedConfig, SteerConfig
from npalign.data.embed import embed_texts, pair_texts
from npalign.data.steer import build_steer
from npalign.data.text import read_text_splits
from npalign.files import write_json


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=int, default=800, help="texts embedded per run")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import ray

    ray.init(include_dashboard=False, log_to_driver=False)
    cpus = ray.cluster_resources().get("CPU", 0)
    tables = read_text_splits(build_steer(SteerConfig()))
    texts = dict(list(pair_texts(tables["train"], include_prompt=True).items())[: args.texts])

    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, actors, cache in (
            ("1 actor", 1, "one"),
            ("2 actors", 2, "two"),
            ("2 actors, rerun", 2, "two"),
        ):
            config = EmbedConfig(
                model=args.model,
                actors=actors,
                batch_size=args.batch_size,
                cache_dir=os.path.join(tmp, cache),
            )
            start = time.perf_counter()
            _, stats = embed_texts(texts, config)
            runs[name] = {
                "actors": actors,
                "texts": stats.texts,
                "embedded": stats.embedded,
                "cached": stats.cached,
                "encoder_seconds": stats.seconds,
                "texts_per_s": stats.texts_per_s,
                "total_seconds": time.perf_counter() - start,
            }

    print(f"\n{len(texts)} texts, {args.model}, batch {args.batch_size}, {cpus:.0f} CPUs")
    print(f"{'run':<18}{'embedded':>10}{'cached':>8}{'encoder s':>11}{'texts/s':>9}{'total s':>9}")
    for name, r in runs.items():
        print(
            f"{name:<18}{r['embedded']:>10}{r['cached']:>8}{r['encoder_seconds']:>11.1f}"
            f"{r['texts_per_s'] or float('nan'):>9.1f}{r['total_seconds']:>9.1f}"
        )
    speedup = runs["2 actors"]["texts_per_s"] / runs["1 actor"]["texts_per_s"]
    print(f"2 actors / 1 actor: {speedup:.2f}x")
    if args.out:
        write_json(
            args.out,
            {"model": args.model, "cpus": cpus, "runs": runs, "speedup_2_vs_1": speedup},
        )


if __name__ == "__main__":
    main()
