"""Ray Train + DeepSpeed integration, on the session's one local Ray cluster (2 workers, gloo)."""

import importlib.util
import json
import math
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from npalign.config import load_config
from npalign.data.episodes import context_rows, sample_episodes
from npalign.data.synthetic import make_synthetic
from npalign.models.reward import load_reward_model

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.ray
# A text task small enough for a test: contexts of up to 3, 1 epoch, scored at m = 0 and 3.
SMALL_TEXT_RUN = [
    "data.max_context=3",
    "data.num_targets=4",
    "data.train_episodes=3200",
    "data.val_episodes=64",
    "data.min_val_pairs=20",  # the tests' small steer task has 36
    "train.epochs=1",
    "eval.context_sizes=[0,3]",
    "eval.num_episodes=100",
]


def test_main_job_killed_and_resumed_trains_npbtl_with_zero2(ray_nodes, tmp_path, capsys):
    """The reward job runs as `ray job submit` would run it; its driver is killed (SIGKILL) once
    the fit has a registered checkpoint (every 20 steps, mid-epoch). `--resume FOLDER` finishes
    the same run in the same folder from there, and the run is what a whole one would be."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from npalign.recipes.outline import rescore_run
    from npalign.recipes.reward import REWARD

    argv = [
        "--config",
        str(ROOT / "configs/synthetic.yaml"),
        f"run.output_dir={tmp_path}",
        "models=[npbtl]",
        "data.synthetic.num_pairs=2000",
        "data.train_episodes=3200",
        "data.val_episodes=256",
        "train.epochs=2",
        "train.zero_stage=2",
        "train.gradient_accumulation_steps=2",
        "train.checkpoint_every_steps=20",  # 50 steps an epoch
        "eval.num_episodes=300",
    ]
    env = {**os.environ, "RAY_ADDRESS": ray_nodes.address}
    driver = subprocess.Popen([sys.executable, str(ROOT / "jobs/train_reward.py"), *argv], env=env)
    try:
        deadline = time.time() + 240
        # Ray Train's controller has registered a checkpoint once its snapshot lists one.
        while not list(tmp_path.glob("synthetic-*/checkpoints/npbtl/checkpoint_manager_*")):
            assert driver.poll() is None and time.time() < deadline
            time.sleep(0.5)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    (folder,) = tmp_path.glob("synthetic-*")
    assert not (folder / "metrics.json").exists()

    assert train_reward_job().main(["--resume", str(folder)]) == 0
    assert capsys.readouterr().out.strip().endswith(f"run folder: {folder}")
    assert len(list(tmp_path.iterdir())) == 1  # no second run folder
    assert (folder / "results" / "npbtl.json").exists()
    npbtl = json.loads((folder / "metrics.json").read_text())["results"]["npbtl"]
    assert npbtl["last_epoch_metrics"]["epoch"] == 2
    assert npbtl["last_epoch_metrics"]["start_step"] >= 20  # went on from a checkpoint
    assert (folder / "accuracy.png").stat().st_size > 0
    assert "npbtl" in (folder / "table.txt").read_text()
    # the finished run scored again, nothing trained: the same test figures
    again = rescore_run(load_config(folder / "config.yaml", schema=REWARD.schema), REWARD, folder)
    rescored = {str(m): s["mean"] for m, s in again.results["npbtl"]["average"].items()}
    assert rescored == {m: s["mean"] for m, s in npbtl["average"].items()}

    # the loss falls from epoch to epoch and ends well below chance (log 2)
    states = {
        c: json.loads((c / "train_state.json").read_text())
        for c in Path(npbtl["checkpoint"]).parent.glob("checkpoint_*")
        if c.is_dir()
    }
    # (a mid-epoch checkpoint the killed run wrote after Ray's last poll may be left as well)
    epochs = {c: s for c, s in states.items() if "epoch_step" not in s["metrics"]}
    assert sorted(s["epoch"] for s in epochs.values()) == [1, 2]
    history = npbtl["train_metrics"]
    assert history["val_nll"] < 0.5
    # the checkpoint evaluated is the epoch with the lowest validation loss
    val_nll = {c: s["metrics"]["val_nll"] for c, s in epochs.items()}
    assert Path(npbtl["checkpoint"]) == min(val_nll, key=val_nll.get)
    assert history["val_nll"] == min(val_nll.values())
    # the context helps: accuracy with 10 context pairs beats none by a wide margin
    average = npbtl["average"]
    assert average["10"]["mean"] > average["0"]["mean"] + 10

    # the checkpoint holds every rank's ZeRO shard and reloads strictly into a plain model
    checkpoint = Path(npbtl["checkpoint"])
    shards = sorted(p.name for p in (checkpoint / "deepspeed").iterdir())
    assert "zero_pp_rank_0_mp_rank_00_optim_states.pt" in shards
    assert "zero_pp_rank_1_mp_rank_00_optim_states.pt" in shards
    load_reward_model(checkpoint)


def train_reward_job():
    spec = importlib.util.spec_from_file_location("train_reward", ROOT / "jobs/train_reward.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    return job


def small_synthetic_fit(folder: Path, overrides: list[str]):
    """(config, pairs, episode files) of a 10-step-per-epoch synthetic NP-BTL fit."""
    config = load_config(
        None,
        [
            "data.synthetic.num_pairs=1000",
            "data.train_episodes=640",
            "data.val_episodes=64",
            "model.hidden_dim=32",
            *overrides,
        ],
    )
    pairs = make_synthetic(config.data.synthetic)
    episodes = {}
    for split, n in (("train", 640), ("val", 64)):
        episodes[split] = folder / f"{split}.parquet"
        pq.write_table(sample_episodes(pairs[split], n, 0, 10, 20, seed=0), episodes[split])
    return config, pairs, episodes


def test_a_killed_worker_resumes_mid_epoch_and_an_unchanged_val_nll_stops_the_fit(
    ray_cluster, tmp_path
):
    """Rank 0's process is killed at step 13 (epoch 2 of 4, 10 steps each); the worker group
    restarts from the step-12 checkpoint and trains steps 13-20 only: the batches it had not
    reached (which rows those are is fixed by the file: see the rank_batches test). At a learning
    rate too small to move a weight val_nll is the same every epoch, so with patience 1 the fit
    then stops after epoch 2 and keeps epoch 1's checkpoint (that a rerun then trains no further:
    the resume_point test)."""
    from npalign.train.loop import kept, val_by_epoch
    from npalign.train.reward import fit_reward_model

    config, pairs, episodes = small_synthetic_fit(
        tmp_path,
        [
            "train.epochs=4",
            "train.lr=1e-30",
            "train.patience=1",
            "train.zero_stage=3",
            "train.checkpoint_every_steps=4",
            "train.max_failures=1",
            "train.fail_at_step=13",
        ],
    )
    killed = fit_reward_model(config, "npbtl", pairs, episodes, tmp_path / "killed")
    assert killed.metrics["start_step"] == 12  # the step checkpoint before the kill
    assert killed.metrics["step"] == 20
    assert killed.metrics["epoch"] == 2 and killed.metrics["epochs_without_improvement"] == 1
    load_reward_model(Path(killed.checkpoint.path))  # written after the restart
    shards = {p.name for p in (Path(killed.checkpoint.path) / "deepspeed").iterdir()}
    assert {
        "zero_pp_rank_0_mp_rank_00_model_states.pt",
        "zero_pp_rank_1_mp_rank_00_model_states.pt",
    } <= shards
    # the mid-epoch checkpoints never count as the best epoch
    checkpoint, metrics = kept(killed, config.train)
    assert "epoch_step" not in metrics and metrics["epoch"] == 1
    load_reward_model(Path(checkpoint.path))
    curve = val_by_epoch(killed)  # the whole validation curve, as the run folder reports it
    assert list(curve) == [1, 2] and curve[1] == metrics["val_nll"]
    assert json.loads((Path(checkpoint.path) / "train_state.json").read_text())["epoch"] == 1


def test_a_run_goes_on_where_its_checkpoint_left_off_and_a_stopped_one_trains_no_further():
    from npalign.config import TrainConfig
    from npalign.train.loop import HISTORY, resume_point

    config = TrainConfig(epochs=4, patience=1)
    flat = {"epoch": 2, "step": 20, HISTORY: [0.5, 0.5]}  # epoch 2 did not improve on 1
    assert resume_point(config, flat, 10) == (5, 0)  # stopped: past the last epoch
    assert resume_point(config.model_copy(update={"patience": None}), flat, 10) == (3, 0)
    falling = {"epoch": 2, "step": 20, HISTORY: [0.5, 0.4]}
    assert resume_point(config, falling, 10) == (3, 0)
    # mid-epoch: the rest of that epoch, whatever the curve so far
    assert resume_point(config, {**flat, "step": 13, "epoch_step": 3}, 10) == (2, 3)


def test_rank_batches_share_each_global_batch_in_order_and_skip_whole_batches(ray_cluster):
    import pyarrow as pa
    import ray.data

    from npalign.train.loop import MICRO_BATCHES_PER_CHUNK, rank_batches

    rows = 4 * MICRO_BATCHES_PER_CHUNK + 7  # a chunk of 16 global batches of 4, then 1 and 3 rows
    dataset = ray.data.from_arrow(pa.table({"episode": list(range(rows))}))
    shares = [
        [b["episode"].to_pylist() for b in rank_batches(dataset, 4, rank, 2)] for rank in (0, 1)
    ]
    assert shares[0][:2] == [[0, 1], [4, 5]] and shares[1][:2] == [[2, 3], [6, 7]]
    assert len(shares[0]) == len(shares[1]) == MICRO_BATCHES_PER_CHUNK + 1
    assert sorted(sum(shares[0] + shares[1], [])) == list(range(rows - 3))
    skipped = [b["episode"].to_pylist() for b in rank_batches(dataset, 4, 1, 2, skip=15)]
    assert skipped == [[62, 63], [66, 67]]


def test_the_reward_job_trains_on_a_users_own_file(ray_cluster, tmp_path, capsys):
    """A user's own file through the reward job (Ray Data embeds it, Ray Train fits NP-BTL,
    the test split is scored by context size): TRL's format (prompt/chosen/rejected, half as chat
    messages, a user and a user-type column). A table of responses rated on attributes takes the
    same path once read (`records (rated)` in test_no_leak.py)."""
    from test_job import load_job
    from test_no_leak import steer_rows, write_trl_jsonl

    path = tmp_path / "prefs.jsonl"
    write_trl_jsonl(path, steer_rows())
    job = load_job("train_reward")
    code = job.main(
        [
            "--config",
            str(ROOT / "configs/steer.yaml"),
            f"run.output_dir={tmp_path}",
            "data.source=records",
            f"data.path={path}",
            "data.records.format=trl",
            "data.records.columns.user_type=user_type",
            "models=[npbtl]",
            *SMALL_TEXT_RUN,
            # Long enough (500 steps) for NP-BTL to learn to read the context: 300 left it at
            # 69 % with three choices (a 3x rate left the flat start never).
            "data.train_episodes=6400",
            "train.epochs=5",
        ]
    )
    assert code == 0
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("run folder: "))
    npbtl = json.loads((folder / "metrics.json").read_text())["results"]["npbtl"]
    assert sorted(npbtl["by_type"]) == ["concise", "detailed"]
    assert set(npbtl["average"]) == {"0", "3"}
    # The users disagree on every pair: three of a user's choices tell who they are.
    assert npbtl["average"]["3"]["mean"] > npbtl["average"]["0"]["mean"] + 20


def test_steer_task_embeds_text_and_trains_an_oracle_per_type(ray_cluster, tmp_path):
    from npalign.recipes.outline import run_recipe
    from npalign.recipes.reward import REWARD

    config = load_config(
        ROOT / "configs/steer.yaml",
        [
            f"run.output_dir={tmp_path}",
            "models=[oracle]",
            "data.steer.stories=30",
            "data.steer.pairs_per_prompt=6",
            *SMALL_TEXT_RUN,
        ],
    )
    run = run_recipe(config, REWARD)
    oracle = run.results["oracle"]
    assert sorted(oracle["by_type"]) == ["concise", "detailed"]
    # every pair is one the types disagree on: a BTL fitted to one type's labels must beat
    # chance on that type by far (a pooled one cannot)
    for by_m in oracle["by_type"].values():
        assert by_m[0]["mean"] > 75
    assert sorted(p.name for p in Path(run.folder / "checkpoints").iterdir()) == [
        "oracle-concise",
        "oracle-detailed",
    ]


def test_policy_trains_with_zero2_and_its_preference_loss_falls(ray_cluster, tmp_path):
    from npalign.config import PolicyJobConfig
    from npalign.recipes.outline import run_recipe
    from npalign.recipes.policy import POLICY

    job = load_config(
        ROOT / "configs/steer_policy.yaml",
        [
            f"run.output_dir={tmp_path}",
            "data.steer.stories=30",
            "data.steer.pairs_per_prompt=6",
            "data.min_val_pairs=20",  # 36 in this small steer task
            "data.max_context=3",
            "data.num_targets=2",
            "data.train_episodes=32",
            "data.val_episodes=16",
            "data.empty_context_share=0",  # paired m = 0 groups hold the loss at log 2
            "policy.num_layers=2",  # SmolLM2's first 2 blocks: the real tokenizer, a fast model
            "policy.lora_rank=8",
            "policy.max_response_tokens=24",
            "policy.sft_weight=0",  # the training loss is then the preference loss alone
            # Cut to 2 blocks, the LM moves its per-token log-probs by nats within an epoch: at
            # the configuration's β 4 per token both APO-zero terms saturate, the loss sits at 1.
            "policy.beta=1",
            "models=[npdpo]",
            "train.epochs=2",
            "train.lr=3e-4",
            "train.gradient_accumulation_steps=2",  # 2 workers x 2 micro-batches of 1 episode
            "eval.context_sizes=[0,3]",
            "eval.num_episodes=8",
        ],
        PolicyJobConfig,
    )
    # The recipe first trains a small NP-BTL whose context encoder starts z's.
    encoder_yaml = tmp_path / "encoder.yaml"
    encoder_yaml.write_text(
        "data: {num_targets: 4, train_episodes: 640, val_episodes: 64}\n"
        "train: {batch_size: 64, epochs: 1}\neval: {num_episodes: 50}\n"
    )
    job.policy.encoder_job = str(encoder_yaml)
    run = run_recipe(job, POLICY)
    encoder = run.earlier["npbtl"].results["npbtl"]["checkpoint"]
    saved = yaml.safe_load((run.folder / "config.yaml").read_text())
    assert saved["policy"]["encoder_init"] == encoder
    npdpo = run.results["npdpo"]
    # z's frame was measured from that encoder and saved with the policy
    spec = json.loads((Path(npdpo["checkpoint"]) / "policy.json").read_text())
    assert spec["policy"]["latent_scale"] > 0
    assert len(spec["policy"]["latent_centre"]) == job.policy.latent_dim
    # and kept as it was (policy.encoder_lr 0): z's frame still holds after training
    from safetensors.torch import load_file

    from npalign.models.policy import WEIGHTS_FILE

    saved = load_file(str(Path(npdpo["checkpoint"]) / WEIGHTS_FILE))
    for name, tensor in load_reward_model(encoder).context_encoder.state_dict().items():
        assert saved[f"encoder.{name}"].equal(tensor), name
    states = [
        json.loads((c / "train_state.json").read_text())
        for c in sorted(Path(npdpo["checkpoint"]).parent.glob("checkpoint_*"))
        if c.is_dir()
    ]
    assert [s["epoch"] for s in states] == [1, 2]
    # At the identity the loss is log 2 on an episode without context (DPO) and 1 on one with
    # (APO-zero): the second pass over the same episodes must be below both that and the first
    contexts = context_rows(pq.read_table(run.folder / "episodes" / "train.parquet"))
    at_identity = float(np.mean([1.0 if len(c) else math.log(2) for c in contexts]))
    first, second = (s["metrics"]["train_loss"] for s in states)
    assert second < min(first, at_identity), (first, second, at_identity)
    assert (run.folder / "implicit_accuracy.png").exists()
    for m in (0, 3):
        assert 0 <= npdpo["average"][m]["mean"] <= 100
        low, high = npdpo["average"][m]["ci"]
        assert low <= npdpo["average"][m]["mean"] <= high


def test_a_bar_closed_twice_leaves_no_ghost_after_the_fit():
    from ray.experimental import tqdm_ray

    from npalign.train.loop import close_worker_bars

    manager = tqdm_ray.instance()
    worker = {"__magic_token__": tqdm_ray.RAY_TQDM_MAGIC, "ip": manager.ip, "pid": -1, "pos": 0}
    state = {**worker, "x": 4, "total": 4, "desc": "epoch 1/1", "unit": "it", "uuid": "u1"}
    manager.process_state_update({**state, "closed": False})
    manager.process_state_update({**state, "closed": True})
    manager.process_state_update({**state, "closed": True})  # the same line, delivered again
    assert any(k[1] == -1 for k in manager.bar_groups), "the second copy re-creates the bar"
    close_worker_bars()
    assert not any(k[1] == -1 for k in manager.bar_groups)


def test_cpu_training_flushes_subnormal_floats_to_zero():
    import torch

    from npalign.train.loop import flush_denormals

    subnormal = torch.tensor([1e-40])  # below float32's smallest normal number, 1.2e-38
    assert (subnormal * 1.0).item() != 0, "kept by default: the slow path the loop avoids"
    try:
        assert flush_denormals(torch.device("cpu"))
        assert (subnormal * 1.0).item() == 0
    finally:
        torch.set_flush_denormal(False)


# What the test relies on: glibc's malloc with its default, dynamic mmap threshold.
TUNED_MALLOC = [
    k for k in os.environ if k.startswith("MALLOC_") or k in ("GLIBC_TUNABLES", "LD_PRELOAD")
]


@pytest.mark.skipif(
    not Path("/proc/self/status").exists() or bool(TUNED_MALLOC),
    reason=f"needs Linux and glibc's malloc as it comes (set here: {TUNED_MALLOC})",
)
def test_cpu_training_hands_freed_tensor_memory_back_to_the_os():
    import torch

    from npalign.train.loop import release_freed_memory

    def resident_mib() -> float:
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line.split()[1] for line in status if line.startswith("VmRSS"))) / 1024

    # A 16 MB tensor freed raises glibc's mmap threshold: later 4 MB tensors come from its
    # heap, and the freed ones among those kept stay resident as holes.
    del_me = torch.ones(4 * 2**20)
    del del_me
    kept, freed = [], []
    for i in range(200):
        (kept if i % 2 else freed).append(torch.ones(2**20))
    start = resident_mib()
    freed.clear()
    assert resident_mib() > start - 100, "glibc keeps the 400 MB of freed tensors"
    assert release_freed_memory(torch.device("cpu"))
    assert resident_mib() < start - 300
    assert not release_freed_memory(torch.device("cuda"))  # CUDA has its own allocator


def test_micro_batches_slice_chunks_in_order_and_drop_only_the_last_part(ray_cluster):
    import pyarrow as pa
    import ray.data

    from npalign.train.loop import MICRO_BATCHES_PER_CHUNK, micro_batches

    rows = 2 * MICRO_BATCHES_PER_CHUNK + 5  # a full chunk, then a chunk of 5 rows
    dataset = ray.data.from_arrow(pa.table({"episode": list(range(rows))}))
    kept = [b["episode"].to_pylist() for b in micro_batches(dataset, 2, drop_last=True)]
    assert [len(b) for b in kept] == [2] * (MICRO_BATCHES_PER_CHUNK + 2)
    assert sum(kept, []) == list(range(rows - 1))
    every = [b["episode"].to_pylist() for b in micro_batches(dataset, 2, drop_last=False)]
    assert sum(every, []) == list(range(rows)) and len(every[-1]) == 1


def test_the_learning_rate_warms_up_then_decays():
    from npalign.train.loop import cosine_schedule, epochs_without_improvement

    factor = cosine_schedule(total_steps=100, warmup_steps=10)
    assert [factor(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert factor(10) == pytest.approx(1.0) and factor(55) == pytest.approx(0.5)
    assert factor(100) == pytest.approx(0.0)
    assert cosine_schedule(100)(0) == 1.0  # no warm-up: the full rate from the first step
    assert epochs_without_improvement([3.0, 2.0, 2.5, 2.6]) == 2
    assert epochs_without_improvement([3.0, 2.0, 1.0]) == 0
