"""Platform overhead: NP-BTL training through Ray Data + Ray Train + DeepSpeed ZeRO-2 vs a plain
single-process PyTorch loop over the same episodes, model and batch size, in one run.

Steady state is the last epoch of the platform run (the first one warms up Ray Data's stream)
from its first batch on, and the plain loop after a few warm-up steps. The wait for each epoch's
first batch (Ray Data starting that epoch's read pipeline) is printed separately, with the
whole-epoch rate that includes it. Start-up (worker launch, imports, DeepSpeed init,
checkpoints, validation) is printed separately: wall time of the fit minus its training time.

  .venv/bin/python benchmarks/platform_overhead.py --out benchmarks/platform_overhead.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import ray
import torch

from npalign.config import load_config
from npalign.data.episodes import collate, episode_arrays, sample_episodes
from npalign.data.synthetic import make_synthetic
from npalign.files import write_json
from npalign.models.reward import build_reward_model, preference_loss
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


def deepspeed_step_cost(config, pairs, episodes, steps: int = 150) -> dict[str, float]:
    """ms per step of one worker's share of the batch, 1 thread: plain torch vs a single-process
    DeepSpeed engine (same ZeRO stage, world size 1) over the same batches. Isolates what
    DeepSpeed itself adds from Ray Data, communication and core sharing."""
    import os

    import deepspeed
    import torch.distributed as dist

    from npalign.train.deepspeed import deepspeed_config

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT="29517", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0"
    )
    dist.init_process_group("gloo")
    micro = config.train.batch_size // config.train.num_workers
    rows = episode_arrays(episodes)
    batches = [
        collate({k: v[i * micro : (i + 1) * micro] for k, v in rows.items()}, pairs)
        for i in range(steps + 10)
    ]
    train = config.train.model_copy(update={"batch_size": micro})

    def time_steps(step) -> float:
        for batch in batches[:10]:
            step(batch)
        start = time.perf_counter()
        for batch in batches[10:]:
            step(batch)
        return (time.perf_counter() - start) / steps * 1000

    torch.manual_seed(0)
    model = build_reward_model("npbtl", config.model, pairs.feature_dim).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr)

    def plain_step(batch):
        loss, _ = preference_loss(model(batch), batch)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
        optimizer.step()

    torch.manual_seed(0)
    ds_model = build_reward_model("npbtl", config.model, pairs.feature_dim)
    engine, _, _, _ = deepspeed.initialize(
        model=ds_model,
        optimizer=torch.optim.AdamW(ds_model.parameters(), lr=config.train.lr),
        config=deepspeed_config(train, 1),
    )

    def deepspeed_step(batch):
        loss, _ = preference_loss(engine(batch), batch)
        engine.backward(loss)
        engine.step()

    plain_ms, deepspeed_ms = time_steps(plain_step), time_steps(deepspeed_step)
    dist.destroy_process_group()
    torch.set_num_threads(threads)
    return {"micro_batch": micro, "plain_ms": plain_ms, "deepspeed_ms": deepspeed_ms}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", help="write the figures as JSON here")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args()
    config = load_config(
        None,
        [
            "data.train_episodes=25600",
            "data.val_episodes=256",
            "model.hidden_dim=128",
            "train.epochs=2",
            "train.zero_stage=2",
            "train.batch_size=64",
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

    plain = plain_loop(config, pairs["train"], episodes["train"])
    print(f"plain torch loop: {plain:.0f} episodes/s ({torch.get_num_threads()} threads)")

    step_cost = deepspeed_step_cost(config, pairs["train"], episodes["train"])
    print(
        f"one worker's step (batch {step_cost['micro_batch']}, 1 thread): "
        f"plain {step_cost['plain_ms']:.1f} ms, DeepSpeed ZeRO-{config.train.zero_stage} "
        f"{step_cost['deepspeed_ms']:.1f} ms"
    )

    ray.init(include_dashboard=False)
    with tempfile.TemporaryDirectory() as folder:
        files = {}
        for split, table in episodes.items():
            files[split] = Path(folder) / f"{split}.parquet"
            pq.write_table(table, files[split])
        start = time.perf_counter()
        result = fit_reward_model(config, "npbtl", pairs, files, Path(folder) / "checkpoints")
        wall = time.perf_counter() - start
        history = result.metrics_dataframe
    per_epoch = history["train_episodes_per_s"].tolist()
    train_seconds = sum(d.train_episodes / eps for eps in per_epoch)
    first_batch = history["first_batch_s"].tolist()
    # Steady state: the last epoch once its first batch is in. Ray Data starts each epoch's
    # read pipeline when the first batch is asked for; that wait is a per-epoch start-up cost,
    # reported beside it, and the whole-epoch rate (which includes it) too.
    platform = history["steady_episodes_per_s"].tolist()[-1]
    figures = {
        "plain_episodes_per_s": plain,
        "platform_episodes_per_s": platform,
        "ratio": platform / plain,
        "platform_whole_epoch_episodes_per_s_by_epoch": per_epoch,
        "whole_epoch_ratio": per_epoch[-1] / plain,
        "first_batch_wait_s_by_epoch": first_batch,
        "startup_and_checkpoint_s": wall - train_seconds,
        "data_wait_share": history["data_wait_share"].tolist()[-1],
        "step_cost_one_worker": step_cost,
        "fit_wall_s": wall,
        "workers": config.train.num_workers,
        "zero_stage": config.train.zero_stage,
        "batch_size": config.train.batch_size,
        "hidden_dim": config.model.hidden_dim,
    }
    print(
        f"platform (Ray Data + Train + DeepSpeed ZeRO-{config.train.zero_stage}, "
        f"{config.train.num_workers} workers): {platform:.0f} episodes/s in the last epoch, "
        "after its first batch"
    )
    print(f"ratio platform / plain: {figures['ratio']:.2f}x (goal >= 0.8x)")
    print(
        f"each epoch first waits {first_batch[-1]:.1f} s for Ray Data to start its pipeline; "
        f"with that wait the last epoch runs at {per_epoch[-1]:.0f} episodes/s "
        f"({figures['whole_epoch_ratio']:.2f}x)"
    )
    print(
        f"start-up, validation and checkpoints: {figures['startup_and_checkpoint_s']:.1f} s "
        f"of a {wall:.1f} s fit"
    )
    print(json.dumps(figures, indent=2))
    if args.out:
        write_json(args.out, figures)


if __name__ == "__main__":
    main()
