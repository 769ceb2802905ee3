"""Ray Tune sweeps of the reward job: config checks, a 2-trial sweep, interrupt and resume."""

import csv
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from npalign.config import ConfigError, SweepConfig, load_config, load_tree
from npalign.files import Location
from npalign.sweep import check_space

ROOT = Path(__file__).resolve().parents[1]
# A small synthetic task: each trial is one ~20 s Ray Train fit here. The default configuration
# trains on at most 1 context pair; the space also tries 10.
BASE = [
    "base=" + str(ROOT / "configs/synthetic.yaml"),
    "overrides=[data.synthetic.num_pairs=4000, data.train_episodes=3200, data.val_episodes=500,"
    " train.epochs=2, train.cpus_per_worker=0.2, data.max_context=1, model.latent_dim=16]",
    "eval.num_episodes=500",
]


def sweep_config(tmp_path, *extra: str) -> SweepConfig:
    return load_config(
        ROOT / "configs/sweep_synthetic.yaml",
        [*BASE, f"output_dir={tmp_path}", *extra],
        SweepConfig,
    )


def base_and_sweep(tmp_path, *extra: str) -> tuple[dict, SweepConfig]:
    sweep = sweep_config(tmp_path, *extra)
    return load_tree(sweep.base, sweep.overrides), sweep


def test_space_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="model.latnt_dim"):
        check_space(*base_and_sweep(tmp_path, "space={model.latnt_dim: {grid: [8]}}"))
    with pytest.raises(ConfigError, match="train.lr"):
        check_space(*base_and_sweep(tmp_path, "space={train.lr: {grid: [fast]}}"))
    with pytest.raises(ConfigError, match="cannot be searched"):
        sweep_config(tmp_path, "space={data.synthetic.seed: {grid: [1, 2]}}")
    with pytest.raises(ConfigError, match="exactly one of"):
        sweep_config(tmp_path, "space={train.lr: {grid: [0.1], uniform: [0.1, 0.2]}}")


def test_a_policy_sweep_checks_its_space_against_the_policy_job(tmp_path):
    from npalign.config import PolicyJobConfig
    from npalign.sweep import trial_config

    def policy_sweep(*extra: str) -> tuple[dict, SweepConfig]:
        sweep = load_config(
            ROOT / "configs/sweep_policy.yaml", [f"output_dir={tmp_path}", *extra], SweepConfig
        )
        return load_tree(sweep.base, sweep.overrides), sweep

    base = check_space(*policy_sweep())
    assert isinstance(base, PolicyJobConfig) and base.models == ["npdpo"]
    assert base.policy.num_layers == 4  # the sweep's overrides of the base
    point = trial_config(*policy_sweep(), {"policy.beta": 0.1})
    assert point.policy.beta == 0.1
    with pytest.raises(ConfigError, match="policy.bta"):
        check_space(*policy_sweep("space={policy.bta: {grid: [0.1]}}"))
    with pytest.raises(ConfigError, match="policy.beta"):
        check_space(*policy_sweep("space={policy.beta: {grid: [-1.0]}}"))
    # The NP-BTL trained once before the trials fixes z's encoder dimensions; without it they
    # can be searched.
    with pytest.raises(ConfigError, match="space.policy.latent_dim: every trial starts from"):
        check_space(*policy_sweep("space={policy.latent_dim: {grid: [16, 64]}}"))
    free = policy_sweep(
        "space={policy.latent_dim: {grid: [16, 64]}}", "overrides=[policy.encoder_job=null]"
    )
    assert check_space(*free).policy.encoder_job is None


def read_trials(folder: Location) -> list[dict]:
    return list(csv.DictReader(io.StringIO((folder / "trials.csv").read_text())))


def listing(folder: Location) -> dict[str, float]:
    """Every file under `folder` (a bucket folder): its path there → its modification time."""
    from pyarrow import fs

    selector = fs.FileSelector(folder.path, recursive=True, allow_not_found=True)
    found = folder.fs.get_file_info(selector)
    return {
        f.path.removeprefix(folder.path + "/"): f.mtime.timestamp()
        for f in found
        if f.type == fs.FileType.File
    }


@pytest.mark.ray
def test_interrupted_sweep_resumes_and_finds_a_config_at_least_as_good_as_the_default(
    ray_cluster, bucket, tmp_path
):
    """One 2-trial sweep covers both: driven by tune/sweep_reward.py in its own
    process, Ctrl-C'd after its first finished trial, resumed here, then its chosen config is
    compared on the test split with the default one, which is the sweep's first trial. The sweep
    folder is in a bucket of the local S3 server: Tune's state, the trials' episodes,
    checkpoints and evaluations, the summary."""
    from npalign.evaluation.accuracy import evaluate_reward_model
    from npalign.models.reward import load_reward_model
    from npalign.recipes.reward import REWARD
    from npalign.sweep import resume_sweep, trial_config

    sweeps = Location(bucket.replace("/runs?", "/sweeps?"))
    command = [
        sys.executable,
        str(ROOT / "tune/sweep_reward.py"),
        "--config",
        str(ROOT / "configs/sweep_synthetic.yaml"),
        *BASE,
        f"output_dir={sweeps}",
        # One trial at a time: Ctrl-C then lands between trials' fits, not inside one (a fit
        # torn down mid-epoch on 2 busy cores can outlast any sensible wait).
        "max_concurrent_trials=1",
        # Two trials are enough to show both halves: one finished before Ctrl-C, one after resume.
        # The first is the default configuration (BASE trains on at most 1 context pair).
        "space={data.max_context: {grid: [1, 10]}}",
    ]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    log = tmp_path / "sweep.log"
    with open(log, "wb") as out:
        sweep = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 400
    # Tune's line for a trial it has marked finished (its final report processed)
    while "completed after" not in log.read_text(errors="replace"):
        assert sweep.poll() is None, log.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, "no trial finished"
        time.sleep(1)
    sweep.send_signal(signal.SIGINT)  # what Ctrl-C does: Tune saves its state and stops
    sweep.wait(timeout=300)
    finished = [f for f in listing(sweeps) if f.endswith("/evaluation.json")]
    folder = sweeps / finished[0].split("/")[0]
    done = {
        f.split("/")[1]: mtime
        for f, mtime in listing(folder).items()
        if f.startswith("trials/") and f.endswith("/evaluation.json")
    }
    assert len(done) == 1, done

    run = resume_sweep(folder)
    rows = read_trials(folder)
    # Every trial ran to its end or was stopped by ASHA; nothing errored or was left over.
    assert len(rows) == 2 and {r["status"] for r in rows} <= {"finished", "stopped early"}, rows
    status = {r["trial"]: r["status"] for r in rows}
    for trial, mtime in done.items():  # finished before Ctrl-C: kept, not run again
        starts = (folder / "trials" / trial / "starts.log").read_text().splitlines()
        assert status[trial] == "finished" and len(starts) == 1, starts
        assert listing(folder)[f"trials/{trial}/evaluation.json"] == mtime
    assert run.best is not None and run.best["status"] == "finished"
    assert folder.fs.get_file_info((folder / "accuracy_vs_context.png").path).size > 0
    best_config = load_config(folder / "best.yaml")  # a valid reward-job config
    assert best_config.models == ["npbtl"]

    # The default configuration's trial against the chosen one on the test split.
    default = trial_config(*base_and_sweep(tmp_path), {})
    (default_trial,) = [r for r in run.rows if r["data.max_context"] == default.data.max_context]
    assert default_trial["status"] == "finished", run.rows
    pairs = REWARD.load(default).pairs
    sweep_settings = load_config(folder / "sweep.yaml", schema=SweepConfig).eval
    settings = sweep_settings.model_copy(update={"context_sizes": [5], "num_episodes": 1000})

    def accuracy_at_5(checkpoint) -> float:
        model = load_reward_model(checkpoint)
        scores = evaluate_reward_model(model, pairs["test"], settings, default.data.num_targets)
        return scores["average"][5]["mean"]

    chosen = accuracy_at_5(run.best["checkpoint"])
    baseline = accuracy_at_5(default_trial["checkpoint"])
    assert chosen >= baseline, (run.best, chosen, baseline)
