"""The one training loop: run by every Ray Train worker, DeepSpeed ZeRO inside.

A *task* (reward model now, policy later) says how to build the model, collate Ray Data rows and
compute the loss; this loop owns everything else: DeepSpeed, epochs, validation, checkpoints
holding every rank's shard, resume after a failure, metrics.
"""

from __future__ import annotations

import ctypes
import functools
import json
import logging
import math
import os
import signal
import sys
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
from npalign.files import Location, write_json
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
HISTORY = SELECTION_METRIC + "_by_epoch"  # a checkpoint's state: the whole validation curve
# The score of a mid-epoch checkpoint: finite (Ray's checkpoint snapshot writes inf as null,
# which a resumed run cannot compare), worse than any validation loss.
UNVALIDATED = sys.float_info.max


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


def stops_early(config: TrainConfig, history: list[float]) -> bool:
    """`train.patience` epochs have passed without a lower val_nll."""
    return bool(config.patience and history) and (
        epochs_without_improvement(history) >= config.patience
    )


def kept(result: ray.train.Result, config: TrainConfig) -> tuple[ray.train.Checkpoint, dict]:
    """The checkpoint a fit hands on and its epoch's metrics: the epoch with the lowest val_nll
    (Ray keeps the best ones; mid-epoch checkpoints are never among them), or the last
    (`train.keep`)."""
    epochs = [kept for kept in result.best_checkpoints if "epoch_step" not in kept[1]]
    if config.keep == "best" and epochs:
        return min(epochs, key=lambda kept: kept[1][SELECTION_METRIC])
    return result.checkpoint, result.metrics


def val_by_epoch(result: ray.train.Result) -> dict[int, float]:
    """epoch → val_nll over the whole fit, from its last checkpoint (Ray's own metrics keep
    only the retained checkpoints'): where the kept checkpoint sits on the validation curve."""
    if result.checkpoint is None:
        return {}
    with result.checkpoint.as_directory() as folder:
        state = json.loads((Path(folder) / STATE_FILE).read_text())
    history = state.get(HISTORY, [])
    return {epoch: float(v) for epoch, v in enumerate(history, start=1)}


def flush_denormals(device: torch.device) -> bool:
    """On CPU, flush subnormal floats to zero in this thread. After a few hundred steps NP-BTL's
    backward produces subnormal values (where from, not traced), and x86 CPUs compute on them so
    slowly that a step takes about twice as long as at the start; they are below 1e-38, too
    small to change a gradient. GPUs handle them at full speed, so nothing changes there.
    True if set."""
    return device.type == "cpu" and torch.set_flush_denormal(True)


@functools.cache
def _malloc_trim():
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes = [ctypes.c_size_t]
    return trim


def release_freed_memory(device: torch.device) -> bool:
    """On CPU, ask glibc to hand the memory of freed tensors back to the OS (malloc_trim), after
    each optimizer step. glibc keeps it for reuse, and once large tensors have been freed it
    raises its mmap threshold and serves them from its heap, whose holes stay resident, so the
    peak memory of a large model's step grows after the first step. GPUs have their own
    allocator. True if malloc_trim was called."""
    trim = _malloc_trim() if device.type == "cpu" else None
    if trim is None:
        return False
    trim(0)
    return True


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
# batches and slices them itself (zero-copy). Ray Data's iterator spends Python time on every
# batch it hands out, in threads that hold the GIL while the training thread waits for it;
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


def rank_batches(
    dataset, batch_size: int, rank: int, world: int, skip: int = 0
) -> Iterator[pa.Table]:
    """This rank's share (batch_size / world rows) of every whole global batch of `dataset`,
    in the file's order, from global batch `skip` on. Every rank reads every row (episode rows
    are a few integers each), so which rows make step s is fixed by the file alone: a restart
    skips exactly the batches already trained on and sees the rest in the same order."""
    share = batch_size // world
    chunks = dataset.iter_batches(
        batch_size=batch_size * MICRO_BATCHES_PER_CHUNK, batch_format="pyarrow"
    )
    index = 0
    for chunk in chunks:
        for start in range(0, chunk.num_rows - batch_size + 1, batch_size):
            if index >= skip:
                yield chunk.slice(start + rank * share, share)
            index += 1


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


def save_checkpoint(engine, task: Task, rank: int, state: dict, metrics: dict) -> None:
    """Every rank's ZeRO shard, rank 0's trained weights and `state` (where to resume), reported
    to Ray Train, which merges the ranks' folders into one checkpoint."""
    with tempfile.TemporaryDirectory() as folder:
        engine.save_checkpoint(folder, tag=DEEPSPEED_TAG, client_state=state)
        weights = trained_state_dict(engine)
        if rank == 0:
            task.save(Path(folder), weights)
            write_json(Path(folder) / STATE_FILE, {**state, "metrics": metrics})
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def resume_point(config: TrainConfig, state: dict, steps_per_epoch: int) -> tuple[int, int]:
    """(epoch, batches of it already trained) where a checkpoint's run goes on: past the last
    epoch when the run had stopped early (a rerun trains no further)."""
    epoch, done = state["epoch"], state.get("epoch_step", steps_per_epoch)
    if done < steps_per_epoch:
        return epoch, done
    if stops_early(config, state[HISTORY]):
        return config.epochs + 1, 0
    return epoch + 1, 0


DRILL_WAIT_S = 3.0


def failure_drill(config: TrainConfig, step: int, rank: int, resumed: bool) -> None:
    """`train.fail_at_step`: rank 0's process is killed outright at that step, as a lost node
    would be (no exception, no clean-up), once: a restarted run has a checkpoint. It waits out
    one poll of Ray Train's controller first (every 2 s by default): a checkpoint reported since
    the last poll is not yet registered, and a restart would go back to the one before."""
    if config.fail_at_step == step and rank == 0 and not resumed:
        log.warning("failure drill: killing this worker at step %d", step)
        time.sleep(DRILL_WAIT_S)
        os.kill(os.getpid(), signal.SIGKILL)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    # DeepSpeed's ZeRO calls a torch collective that torch 2.13 marks deprecated, every step.
    warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.* is deprecated")
    task: Task = loop_config["task"]
    config = TrainConfig.model_validate(loop_config["train"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    accumulation = config.gradient_accumulation_steps
    micro_batch = config.micro_batch(world)
    steps_per_epoch = loop_config["train_episodes"] // config.batch_size
    device = ray.train.torch.get_device()
    dtype = torch.bfloat16 if use_bf16(config) else torch.float32
    flush_denormals(device)

    engine, scheduler = build_engine(task, config, steps_per_epoch * config.epochs, world)

    start_epoch, skip, step, val_history = 1, 0, 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            _, state = engine.load_checkpoint(folder, tag=DEEPSPEED_TAG)
        start_epoch, skip = resume_point(config, state, steps_per_epoch)
        step, val_history = state["step"], state[HISTORY]
        if rank == 0:
            log.info("resumed from %s at step %d (epoch %d)", checkpoint.path, step, start_epoch)

    start_step = step
    train_data = ray.train.get_dataset_shard("train")  # every rank: the whole file, in order
    val_shard = ray.train.get_dataset_shard("val")
    for epoch in range(start_epoch, config.epochs + 1):
        engine.train()
        losses = []
        bar = (
            tqdm(total=steps_per_epoch - skip, desc=f"epoch {epoch}/{config.epochs}")
            if rank == 0
            else None
        )
        start = time.perf_counter()
        data_wait = 0.0  # time blocked on Ray Data: a high share means the input is the bottleneck
        first_batch_wait = 0.0  # Ray Data starts the epoch's pipeline (read tasks) on demand
        batches = rank_batches(train_data, config.batch_size, rank, world, skip)
        for epoch_step in range(skip + 1, steps_per_epoch + 1):
            failure_drill(config, step, rank, checkpoint is not None)
            waited = time.perf_counter()
            rows = next(batches)
            wait = time.perf_counter() - waited
            data_wait += wait
            if not losses:
                first_batch_wait = wait
            # DeepSpeed sums the micro-batches' gradients and steps the optimizer on the last.
            for part in range(accumulation):
                batch = task.collate(rows.slice(part * micro_batch, micro_batch), "train")
                loss, _ = task.loss(engine, batch.to(device, dtype), step)
                engine.backward(loss)
                engine.step()
                losses.append(loss.detach().float())
            release_freed_memory(device)
            step += 1
            if bar:
                bar.update(1)
            every = config.checkpoint_every_steps
            if every and step % every == 0 and epoch_step < steps_per_epoch:
                # Mid-epoch: no validation; the worst score keeps it out of the best ones.
                state = {"epoch": epoch, "epoch_step": epoch_step, "step": step}
                mean_loss = torch.stack(losses).mean().item()
                metrics = {**state, "train_loss": mean_loss, SELECTION_METRIC: UNVALIDATED}
                save_checkpoint(engine, task, rank, state | {HISTORY: val_history}, metrics)
        skip = 0
        train_seconds = time.perf_counter() - start
        if bar:
            bar.close()
        trained = len(losses) // accumulation * config.batch_size
        metrics = {
            "epoch": epoch,
            "step": step,
            "start_step": start_step,  # > 0 when this run resumed from a checkpoint
            "train_loss": torch.stack(losses).mean().item() if losses else float("nan"),
            "train_episodes_per_s": trained / train_seconds,
            # The same once the epoch's first batch has arrived: the rate a longer epoch tends to.
            "steady_episodes_per_s": trained / max(train_seconds - first_batch_wait, 1e-9),
            "first_batch_s": first_batch_wait,
            "data_wait_share": data_wait / train_seconds,
            "lr": scheduler.get_last_lr()[0],
            **_validate(engine, task, val_shard, micro_batch, step, device, dtype),
        }
        val_history.append(metrics[SELECTION_METRIC])
        metrics["epochs_without_improvement"] = epochs_without_improvement(val_history)
        if rank == 0:
            log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in metrics.items()})
        state = {"epoch": epoch, "epoch_step": steps_per_epoch, "step": step}
        save_checkpoint(engine, task, rank, state | {HISTORY: val_history}, metrics)
        # Every rank has the same (all-reduced) validation metrics, so all stop together.
        if stops_early(config, val_history):
            if rank == 0:
                log.info("stopping early: val_nll has not fallen for %d epochs", config.patience)
            break


def uses_gpu(train: TrainConfig) -> bool:
    """`train.use_gpu`, with "auto" meaning: the cluster has GPUs (before Ray has started: this
    machine, where the first Ray call will start it)."""
    if train.use_gpu != "auto":
        return train.use_gpu
    if ray.is_initialized():
        return ray.cluster_resources().get("GPU", 0) > 0
    return torch.cuda.is_available()


def scaling_config(train: TrainConfig) -> ray.train.ScalingConfig:
    use_gpu = uses_gpu(train)
    resources = {
        **train.worker_resources,
        "CPU": train.cpus_per_worker,
        **({"GPU": 1} if use_gpu else {}),
    }
    return ray.train.ScalingConfig(
        num_workers=train.num_workers, use_gpu=use_gpu, resources_per_worker=resources
    )


def read_episodes(where: Location, blocks: int | None = None) -> ray.data.Dataset:
    """An episode table as a Ray Data dataset, from local disk or a URI."""
    return ray.data.read_parquet(where.path, filesystem=where.fs, override_num_blocks=blocks)


def ordered_train_data() -> ray.train.DataConfig:
    """Train episodes whole to every worker, in the file's order (`rank_batches` takes each
    rank's share): a resumed run trains on the very batches it had not reached. Validation is
    split among the workers as usual (its metrics are sums)."""
    limits = ray.data.DataContext.get_current().execution_options.resource_limits
    options = ray.data.ExecutionOptions(preserve_order=True, resource_limits=limits)
    return ray.train.DataConfig(datasets_to_split=["val"], execution_options={"train": options})


def fit_task(
    task: Task,
    train: TrainConfig,
    train_episodes: int,
    episodes: dict[str, Path | Location],
    storage: Path | Location,
    name: str,
    callbacks: list | None = None,
) -> ray.train.Result:
    """Run this loop for `task` under a TorchTrainer: episodes streamed from parquet by Ray Data,
    checkpoints in storage/name (local or a URI). Rerunning with the same storage resumes from
    the latest one."""
    from ray.train.torch import TorchTrainer

    storage = Location(storage)

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
            # Ray Train writes every rank's checkpoint there, on any filesystem pyarrow knows.
            storage_path=storage.path,
            storage_filesystem=storage.fs,
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
            # Train episodes read once, here, as one block (the file's order, also after a
            # --resume reads it again): every worker then iterates that block, no read tasks.
            "train": read_episodes(Location(episodes["train"]), blocks=1).materialize(),
            "val": read_episodes(Location(episodes["val"])),
        },
        dataset_config=ordered_train_data(),
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
