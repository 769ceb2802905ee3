"""Platform overhead: NP-BTL training through Ray Data + Ray Train + DeepSpeed ZeRO-2 vs a plain
single-process PyTorch loop over the same episodes, model and batch size, in one run. Between
them, the same data parallelism without the platform: as many plain processes as workers, each
a DeepSpeed engine over gloo. The plain loop runs first and last; its mean is the reference.

Steady state is the last epoch of the platform run (the first one warms up Ray Data's stream)
from its first batch on, and the plain loop after a few warm-up steps. The wait for each epoch's
first batch (Ray Data starting that epoch's read pipeline) is printed separately, with the
whole-epoch rate that includes it. Start-up (worker launch, imports, DeepSpeed init,
checkpoints, validation) is printed separately: wall time of the fit minus its training time.
All of it at each batch size in turn (64, the configs' batch, to 1,024), since the platform's
cost per step is nearly fixed and its share falls as a step holds more work.

  .venv/bin/python benchmarks/platform_overhead.py --out benchmarks/platform_overhead.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import pyarrow.parquet as pq
import ray
import torch

from npalign.config import load_config
from npalign.data.episodes import collate, episode_arrays, sample_episodes
from npalign.data.synthetic import make_synthetic
from npalign.files import write_json
from npalign.models.reward import build_reward_model, preference_loss
from npalign.train.loop import flush_denormals
from npalign.train.reward import fit_reward_model


def plain_loop(config, pairs, episodes, warmup: int = 10) -> float:
    """Episodes/s of a plain torch loop: collate → forward → backward → AdamW step."""
    torch.manual_seed(config.train.seed)
    model = build_reward_model("npbtl", config.model, pairs.feature_dim).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr)
    rows = episode_arrays(episodes)
    batch_size = config.train.batch_size
    steps = len(rows["target"]) // batch_size
    start = None
    for step in range(steps):
        if step == warmup:
            start = time.perf_counter()
        chunk = slice(step * batch_size, (step + 1) * batch_size)
        batch = collate({k: v[chunk] for k, v in rows.items()}, pairs)
        loss, _ = preference_loss(model(batch), batch)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
        optimizer.step()
    return (steps - warmup) * batch_size / (time.perf_counter() - start)


def _bare_deepspeed_rank(rank, world, config, pairs, episodes, out, warmup=10) -> None:
    """One of `world` plain processes (no Ray): DeepSpeed over gloo, 1 thread like a Ray Train
    worker on a fractional CPU, each rank collating its share of every batch from numpy."""
    import os

    import deepspeed
    import torch.distributed as dist

    from npalign.train.deepspeed import deepspeed_config

    # As in the training loop: ZeRO calls a collective torch marks deprecated, every step.
    warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.* is deprecated")
    torch.set_num_threads(1)
    flush_denormals(torch.device("cpu"))  # as the platform's workers do: the same arithmetic
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT="29517",
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(config.train.seed)
    model = build_reward_model("npbtl", config.model, pairs.feature_dim)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=torch.optim.AdamW(model.parameters(), lr=config.train.lr),
        config=deepspeed_config(config.train, world),
    )
    rows = episode_arrays(episodes)
    batch_size = config.train.batch_size
    micro = batch_size // world
    steps = len(rows["target"]) // batch_size
    for step in range(steps):
        if step == warmup:
            dist.barrier()
            start = time.perf_counter()
        first = step * batch_size + rank * micro
        batch = collate({k: v[first : first + micro] for k, v in rows.items()}, pairs)
        loss, _ = preference_loss(engine(batch), batch)
        engine.backward(loss)
        engine.step()
    dist.barrier()
    seconds = time.perf_counter() - start
    if rank == 0:
        write_json(out, {"episodes_per_s": (steps - warmup) * batch_size / seconds})
    dist.destroy_process_group()


def bare_deepspeed(config, pairs, episodes) -> float:
    """Episodes/s of the platform's data parallelism without the platform: as many plain
    processes as Ray Train workers, each a DeepSpeed engine at the same ZeRO stage over gloo,
    the same batches split the same way. Splits the gap to the plain loop into what running
    data-parallel on these cores costs and what Ray Data + Ray Train add on top."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "bare.json"
        mp.spawn(
            _bare_deepspeed_rank,
            args=(config.train.num_workers, config, pairs, episodes, out),
            nprocs=config.train.num_workers,
        )
        return json.loads(out.read_text())["episodes_per_s"]


def platform_fit(config, pairs, episodes) -> dict[str, float]:
    """Steady-state episodes/s of the real thing: fit_reward_model on its own local Ray."""
    ray.init(include_dashboard=False)
    try:
        with tempfile.TemporaryDirectory() as folder:
            files = {}
            for split, table in episodes.items():
                files[split] = Path(folder) / f"{split}.parquet"
                pq.write_table(table, files[split])
            start = time.perf_counter()
            result = fit_reward_model(config, "npbtl", pairs, files, Path(folder) / "checkpoints")
            wall = time.perf_counter() - start
    finally:
        ray.shutdown()
    history = result.metrics_dataframe
    per_epoch = history["train_episodes_per_s"].tolist()
    # Steady state: the last epoch once its first batch is in. Ray Data starts each epoch's
    # read pipeline when the first batch is asked for; that wait is a per-epoch start-up cost,
    # reported beside it, and the whole-epoch rate (which includes it) too.
    return {
        "episodes_per_s": history["steady_episodes_per_s"].tolist()[-1],
        "whole_epoch_episodes_per_s_by_epoch": per_epoch,
        "first_batch_wait_s_by_epoch": history["first_batch_s"].tolist(),
        "data_wait_share": history["data_wait_share"].tolist()[-1],
        "startup_and_checkpoint_s": wall - sum(config.data.train_episodes / e for e in per_epoch),
        "fit_wall_s": wall,
    }


def measure(config, pairs, episodes) -> dict:
    """Plain loop, bare DeepSpeed, platform and the plain loop again, at one batch size."""
    b = config.train.batch_size
    # The plain loop runs before and after the rest; its mean is the reference, and the two
    # runs show how much this shared machine drifted meanwhile.
    plain_before = plain_loop(config, pairs["train"], episodes["train"])
    print(f"[batch {b}] plain torch loop: {plain_before:.0f} episodes/s")
    bare = bare_deepspeed(config, pairs["train"], episodes["train"])
    print(
        f"[batch {b}] bare DeepSpeed, {config.train.num_workers} processes: {bare:.0f} episodes/s"
    )
    platform = platform_fit(config, pairs, episodes)
    print(f"[batch {b}] platform: {platform['episodes_per_s']:.0f} episodes/s")
    plain_after = plain_loop(config, pairs["train"], episodes["train"])
    print(f"[batch {b}] plain torch loop again: {plain_after:.0f} episodes/s")
    plain = (plain_before + plain_after) / 2
    return {
        "batch_size": b,
        "plain_episodes_per_s": plain,
        "plain_episodes_per_s_before_after": [plain_before, plain_after],
        "bare_deepspeed_episodes_per_s": bare,
        "platform_episodes_per_s": platform["episodes_per_s"],
        "ratio": platform["episodes_per_s"] / plain,
        "bare_ratio": bare / plain,
        "platform_over_bare": platform["episodes_per_s"] / bare,
        "whole_epoch_ratio": platform["whole_epoch_episodes_per_s_by_epoch"][-1] / plain,
        # Per step, what the platform costs beyond the plain loop: flat in the batch size
        # when it is a fixed cost (start of collectives, Ray's processes), not compute.
        "extra_ms_per_step": 1000 * b * (1 / platform["episodes_per_s"] - 1 / plain),
        "platform": platform,
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = [r["batch_size"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in [
        ("plain_episodes_per_s", "plain torch loop (1 process)"),
        ("bare_deepspeed_episodes_per_s", "bare DeepSpeed (processes, no Ray)"),
        ("platform_episodes_per_s", "platform (Ray Data + Train + DeepSpeed)"),
    ]:
        ax.plot(batches, [r[key] for r in rows], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_xlabel("batch (episodes per step)")
    ax.set_ylabel("episodes/s, steady state")
    ax.set_ylim(bottom=0)
    ax.legend()
    ax.set_title("NP-BTL training throughput")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=[64, 256, 1024],
        help="episodes per step to measure, one after another (default: 64 256 1024; the "
        "configs train with 64)",
    )
    parser.add_argument("--out", help="write the figures as JSON here, and a PNG beside it")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args()
    # Every side flushes subnormal floats to zero, as the platform's training loop does on CPU:
    # without it a step slows 2-3x once training makes them, which would time arithmetic, not
    # the platform.
    flush_denormals(torch.device("cpu"))
    config = load_config(
        None,
        [
            "data.train_episodes=51200",
            "data.val_episodes=256",
            "model.hidden_dim=128",
            "train.epochs=2",
            "train.zero_stage=2",
            *args.overrides,
        ],
    )
    pairs = make_synthetic(config.data.synthetic)
    d = config.data
    episodes = {
        "train": sample_episodes(
            pairs["train"], d.train_episodes, d.min_context, d.max_context, d.num_targets, d.seed
        ),
        "val": sample_episodes(
            pairs["val"], d.val_episodes, d.min_context, d.max_context, d.num_targets, d.seed + 1
        ),
    }
    rows = []
    for batch_size in args.batch_sizes:
        batch_config = config.model_copy(
            update={"train": config.train.model_copy(update={"batch_size": batch_size})}
        )
        rows.append(measure(batch_config, pairs, episodes))

    t = config.train
    print(
        f"\nNP-BTL (hidden {config.model.hidden_dim}), {d.train_episodes} episodes an epoch; "
        f"plain: 1 process, {torch.get_num_threads()} threads; bare and platform: "
        f"{t.num_workers} workers, DeepSpeed ZeRO-{t.zero_stage} over gloo, steady state "
        "(platform: last epoch after its first batch)"
    )
    print(
        f"{'batch':>6} {'plain/s':>8} {'bare/s':>8} {'platform/s':>10} {'platform/plain':>15} "
        f"{'bare/plain':>11} {'platform/bare':>14} {'extra ms/step':>14}"
    )
    for r in rows:
        print(
            f"{r['batch_size']:>6} {r['plain_episodes_per_s']:>8.0f} "
            f"{r['bare_deepspeed_episodes_per_s']:>8.0f} {r['platform_episodes_per_s']:>10.0f} "
            f"{r['ratio']:>14.2f}x {r['bare_ratio']:>10.2f}x {r['platform_over_bare']:>13.2f}x "
            f"{r['extra_ms_per_step']:>14.1f}"
        )
    print(
        "goal: platform / plain >= 0.8x. bare / plain is what running data-parallel on these "
        "cores costs without any platform; platform / bare is what Ray Data + Ray Train add."
    )
    for r in rows:
        p = r["platform"]
        wait = p["first_batch_wait_s_by_epoch"][-1]
        print(
            f"batch {r['batch_size']}: each epoch first waits {wait:.1f}"
            f" s for Ray Data to start its pipeline (whole last epoch {r['whole_epoch_ratio']:.2f}x"
            f" of plain); start-up, validation and checkpoints {p['startup_and_checkpoint_s']:.1f}"
            f" s of a {p['fit_wall_s']:.1f} s fit"
        )
    figures = {
        "workers": t.num_workers,
        "zero_stage": t.zero_stage,
        "hidden_dim": config.model.hidden_dim,
        "train_episodes": d.train_episodes,
        "by_batch": rows,
    }
    print(json.dumps(figures, indent=2))
    if args.out:
        write_json(args.out, figures)
        plot(rows, Path(args.out).with_suffix(".png"))
        print(f"wrote {args.out} and {Path(args.out).with_suffix('.png')}")


if __name__ == "__main__":
    main()
