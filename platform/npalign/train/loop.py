"""The one training loop: run by every Ray Train worker, DeepSpeed ZeRO inside.

A *task* (reward model now, policy later) says how to build the model, collate Ray Data rows and
compute the loss; this loop owns everything else: DeepSpeed, epochs, validation, checkpoints
holding every rank's shard, resume after a failure, metrics.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import deepspeed
import pyarrow as pa
import ray.data
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.experimental import tqdm_ray
from ray.experimental.tqdm_ray import tqdm
from torch import nn

from npalign.config import TrainConfig
from npalign.files import write_json
from npalign.train.deepspeed import deepspeed_config, trained_state_dict, use_bf16

log = logging.getLogger(__name__)

DEEPSPEED_TAG = "deepspeed"  # subfolder of a checkpoint holding every rank's ZeRO shards
STATE_FILE = "train_state.json"


class Task(Protocol):
    """What the loop needs from a job. Instances are pickled to the workers: keep them small."""

    def build_model(self) -> nn.Module: ...

    def param_groups(self, model: nn.Module, lr: float) -> list[dict[str, Any]]: ...

    def collate(self, rows: pa.Table, split: str) -> Any:
        """A batch of dataset rows (arrow: fixed-width list columns convert without copies)."""
        ...

    def loss(
        self, model: nn.Module, batch: Any, step: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean loss and per-episode metrics (each a (batch,) tensor)."""
        ...

    def save(self, folder: Path, state_dict: dict[str, torch.Tensor]) -> None: ...


SELECTION_METRIC = "val_nll"  # lower is better; both tasks report it


def cosine_schedule(total_steps: int, warmup_steps: int = 0):
    """Learning-rate factor: linear from 1/warmup to 1 over `warmup_steps`, then cosine decay
    to 0 at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        done = (min(step, total_steps) - warmup_steps) / max(total_steps - warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * done))

    return factor


def epochs_without_improvement(history: list[float]) -> int:
    """Epochs since the lowest value of `history` (0 when the last is the lowest)."""
    return len(history) - 1 - min(range(len(history)), key=history.__getitem__)


def kept(result: ray.train.Result, config: TrainConfig) -> tuple[ray.train.Checkpoint, dict]:
    """The checkpoint a fit hands on and its epoch's metrics: the epoch with the lowest val_nll
    (Ray keeps the best ones), or the last (`train.keep`)."""
    if config.keep == "best" and result.best_checkpoints:
        return min(result.best_checkpoints, key=lambda kept: kept[1][SELECTION_METRIC])
    return result.checkpoint, result.metrics


def val_by_epoch(result: ray.train.Result) -> dict[int, float]:
    """epoch → val_nll over the whole fit, from its last checkpoint (Ray's own metrics keep
    only the retained checkpoints'): where the kept checkpoint sits on the validation curve."""
    if result.checkpoint is None:
        return {}
    with result.checkpoint.as_directory() as folder:
        state = json.loads((Path(folder) / STATE_FILE).read_text())
    history = state.get(SELECTION_METRIC + "_by_epoch", [])
    return {epoch: float(v) for epoch, v in enumerate(history, start=1)}


def flush_denormals(device: torch.device) -> bool:
    """On CPU, flush subnormal floats to zero in this thread. After a few hundred steps NP-BTL's
    backward produces subnormal values (where from, not traced), and x86 CPUs compute on them so
    slowly that a step takes about twice as long as at the start; they are below 1e-38, too
    small to change a gradient. GPUs handle them at full speed, so nothing changes there.
    True if set."""
    return device.type == "cpu" and torch.set_flush_denormal(True)


def build_engine(task: Task, config: TrainConfig, total_steps: int, world: int):
    """(DeepSpeed engine, lr scheduler) for the task's model: torch AdamW over the task's
    parameter groups, warm-up then cosine decay over `total_steps`. deepspeed.initialize reuses
    the process group already set up (by Ray Train: gloo on CPU, nccl on GPU)."""
    torch.manual_seed(config.seed)
    model = task.build_model()
    optimizer = torch.optim.AdamW(
        task.param_groups(model, config.lr), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_schedule(total_steps, config.warmup_steps)
    )
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(config, world),
    )
    return engine, scheduler


# Episode rows (pair indices) are small, so the loop asks Ray Data for chunks of this many
# micro-batches and slices them itself (zero-copy). Ray Data's iterator spends Python time on
# every batch it hands out, in threads that hold the GIL while the training thread waits for it;
# chunking pays that once per chunk.
MICRO_BATCHES_PER_CHUNK = 16


def micro_batches(shard, micro_batch: int, drop_last: bool) -> Iterator[pa.Table]:
    """A worker's dataset shard as pyarrow micro-batches of `micro_batch` rows."""
    chunks = shard.iter_batches(
        batch_size=micro_batch * MICRO_BATCHES_PER_CHUNK, batch_format="pyarrow"
    )
    for chunk in chunks:
        for start in range(0, chunk.num_rows, micro_batch):
            rows = chunk.slice(start, micro_batch)
            if rows.num_rows == micro_batch or not drop_last:
                yield rows


def _validate(engine, task: Task, shard, micro_batch: int, step: int, device, dtype) -> dict:
    """Mean of each per-episode metric over every rank's validation shard."""
    engine.eval()
    sums: dict[str, torch.Tensor] = {}
    count = torch.zeros((), device=device)
    with torch.no_grad():
        for rows in micro_batches(shard, micro_batch, drop_last=False):
            batch = task.collate(rows, "val").to(device, dtype)
            _, metrics = task.loss(engine, batch, step)
            for name, values in metrics.items():
                sums[name] = sums.get(name, torch.zeros((), device=device)) + values.float().sum()
            count += len(next(iter(metrics.values())))
    names = sorted(sums)
    totals = torch.stack([sums[n] for n in names] + [count])
    if dist.is_initialized():
        dist.all_reduce(totals)
    return {f"val_{n}": (totals[i] / totals[-1]).item() for i, n in enumerate(names)}


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    # DeepSpeed's ZeRO calls a torch collective that torch 2.13 marks deprecated, every step.
    warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.* is deprecated")
    task: Task = loop_config["task"]
    config = TrainConfig.model_validate(loop_config["train"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    micro_batch = config.batch_size // world
    steps_per_epoch = loop_config["train_episodes"] // config.batch_size
    device = ray.train.torch.get_device()
    dtype = torch.bfloat16 if use_bf16(config) else torch.float32
    flush_denormals(device)

    engine, scheduler = build_engine(task, config, steps_per_epoch * config.epochs, world)

    start_epoch, step, val_history = 1, 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            _, state = engine.load_checkpoint(folder, tag=DEEPSPEED_TAG)
        start_epoch, step = state["epoch"] + 1, state["step"]
        val_history = state.get("val_history", [])
        if rank == 0:
            log.info("resumed from %s at epoch %d, step %d", checkpoint.path, state["epoch"], step)

    start_step = step
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    for epoch in range(start_epoch, config.epochs + 1):
        engine.train()
        losses = []
        bar = (
            tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{config.epochs}")
            if rank == 0
            else None
        )
        start = time.perf_counter()
        data_wait = 0.0  # time blocked on Ray Data: a high share means the input is the bottleneck
        first_batch_wait = 0.0  # Ray Data starts the epoch's pipeline (read tasks) on demand
        rows_iter = micro_batches(train_shard, micro_batch, drop_last=True)
        while True:
            waited = time.perf_counter()
            rows = next(rows_iter, None)
            wait = time.perf_counter() - waited
            data_wait += wait
            if not losses:
                first_batch_wait = wait
            if rows is None:
                break
            batch = task.collate(rows, "train").to(device, dtype)
            loss, _ = task.loss(engine, batch, step)
            engine.backward(loss)
            engine.step()
            step += 1
            losses.append(loss.detach().float())
            if bar:
                bar.update(1)
        train_seconds = time.perf_counter() - start
        if bar:
            bar.close()
        metrics = {
            "epoch": epoch,
            "step": step,
            "start_step": start_step,  # > 0 when this run resumed from a checkpoint
            "train_loss": torch.stack(losses).mean().item() if losses else float("nan"),
            "train_episodes_per_s": len(losses) * config.batch_size / train_seconds,
            # The same once the epoch's first batch has arrived: the rate a longer epoch tends to.
            "steady_episodes_per_s": len(losses)
            * config.batch_size
            / max(train_seconds - first_batch_wait, 1e-9),
            "first_batch_s": first_batch_wait,
            "data_wait_share": data_wait / train_seconds,
            "lr": scheduler.get_last_lr()[0],
            **_validate(engine, task, val_shard, micro_batch, step, device, dtype),
        }
        val_history.append(metrics[SELECTION_METRIC])
        metrics["epochs_without_improvement"] = epochs_without_improvement(val_history)
        if rank == 0:
            log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in metrics.items()})

        with tempfile.TemporaryDirectory() as folder:
            # Every rank writes its own ZeRO shard; Ray merges the ranks' folders into one.
            client_state = {"epoch": epoch, "step": step, "val_history": val_history}
            engine.save_checkpoint(folder, tag=DEEPSPEED_TAG, client_state=client_state)
            weights = trained_state_dict(engine)
            if rank == 0:
                task.save(Path(folder), weights)
                state = {
                    "epoch": epoch,
                    "step": step,
                    "metrics": metrics,
                    SELECTION_METRIC + "_by_epoch": val_history,
                }
                write_json(Path(folder) / STATE_FILE, state)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))

        if config.fail_after_epoch == epoch and checkpoint is None:
            raise RuntimeError(f"failure drill: train.fail_after_epoch={epoch}")
        # Every rank has the same (all-reduced) validation metrics, so all stop together.
        if config.patience and metrics["epochs_without_improvement"] >= config.patience:
            if rank == 0:
                log.info("stopping early: val_nll has not fallen for %d epochs", config.patience)
            break


def scaling_config(train: TrainConfig) -> ray.train.ScalingConfig:
    use_gpu = (
        ray.cluster_resources().get("GPU", 0) > 0 if train.use_gpu == "auto" else train.use_gpu
    )
    resources = {"CPU": train.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
    return ray.train.ScalingConfig(
        num_workers=train.num_workers, use_gpu=use_gpu, resources_per_worker=resources
    )


def fit_task(
    task: Task,
    train: TrainConfig,
    train_episodes: int,
    episodes: dict[str, Path],
    storage: Path,
    name: str,
    callbacks: list | None = None,
) -> ray.train.Result:
    """Run this loop for `task` under a TorchTrainer: episodes streamed from parquet by Ray Data,
    checkpoints in storage/name. Rerunning with the same storage resumes from the latest one."""
    from ray.train.torch import TorchTrainer

    # Our own progress bar shows the training steps; Ray Data's per-operator bars would bury it.
    ray.data.DataContext.get_current().enable_progress_bars = False
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "task": task,
            "train": train.model_dump(),
            "train_episodes": train_episodes,
        },
        scaling_config=scaling_config(train),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(storage.resolve()),
            failure_config=ray.train.FailureConfig(max_failures=train.max_failures),
            # The two best epochs' by val_nll and (always kept by Ray, to resume from) the latest.
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=2,
                checkpoint_score_attribute=SELECTION_METRIC,
                checkpoint_score_order="min",
            ),
            callbacks=callbacks,
        ),
        datasets={
            split: ray.data.read_parquet(str(episodes[split].resolve()))
            for split in ("train", "val")
        },
    )
    log.info("training %s on %d workers (ZeRO-%d)", name, train.num_workers, train.zero_stage)
    try:
        return trainer.fit()
    finally:
        close_worker_bars()


def close_worker_bars() -> None:
    """Close the progress bars that workers left open in this driver. Ray 2.60 can hand the
    driver a worker's output line twice (seen here with a plain print); when the second copy of
    a bar's closing state arrives, tqdm_ray re-creates the bar, full and never closed, and
    redraws it with its clock running above every later log line of the job. Once a fit has
    returned no worker bar is live, so any left is such a ghost."""
    manager = getattr(tqdm_ray, "_manager", None)  # None: no bar ever reached this process
    if manager is None:
        return
    with manager.lock:
        for key in [k for k in manager.bar_groups if k[1] != manager.pid]:
            for bar in manager.bar_groups.pop(key).bars_by_uuid.values():
                bar.close()
