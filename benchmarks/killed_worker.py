"""A Ray Train worker killed in the middle of an epoch, for the reward job on the synthetic task
and the policy job on the cut-down LM (SmolLM2's first 2 blocks, the steer task).

The kill is `train.fail_at_step`: at that step rank 0 sends SIGKILL to its own process (its pid),
as the kernel's OOM killer or a lost node would end it: no exception, no clean-up. It waits 3 s
first (`DRILL_WAIT_S`: a checkpoint reported since Ray Train's last poll is not registered yet),
which the extra wall time includes. Ray Train restarts the worker group from the last step
checkpoint (`train.checkpoint_every_steps`) and the run finishes.

Each job runs uninterrupted twice (the second run gives the run-to-run tolerance and, warm like
the killed runs, the wall-time reference), then killed: one step after a step checkpoint and on
the step before the next one, the most a kill can cost. The policy's first run also trains the
NP-BTL that starts z's encoder; the later runs load it. Reported per run: steps lost (the kill's
step, which never finished, minus the step the restart resumed from; goal: at most
checkpoint_every_steps), wall time, and the final metrics: the last epoch's val_nll and its test
accuracy by context size (the policy: implicit reward accuracy; `train.keep: last`, so the epoch
trained after the kill is the one scored). Goal: a killed run's metrics differ from the
uninterrupted run's by no more than the repeat's do.

  .venv/bin/python benchmarks/killed_worker.py --out benchmarks/killed_worker.json
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import ray

from npalign.config import PolicyJobConfig, load_config
from npalign.files import write_json
from npalign.recipes.outline import run_recipe
from npalign.recipes.policy import POLICY
from npalign.recipes.reward import REWARD

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("killed_worker")

# 50 steps an epoch, 2 epochs, a step checkpoint every 10 steps.
REWARD_RUN = [
    "models=[npbtl]",
    "data.synthetic.num_pairs=2000",
    "data.train_episodes=3200",
    "data.val_episodes=500",
    "train.epochs=2",
    "train.checkpoint_every_steps=10",
    "train.keep=last",  # the epoch trained after the kill is the one scored
    "eval.num_episodes=1000",
]
REWARD_KILLS = [61, 69]
# The policy test's cut-down run (tests/test_train.py), 16 steps an epoch, 2 epochs, a step
# checkpoint every 4 steps.
POLICY_RUN = [
    "data.steer.stories=30",
    "data.steer.pairs_per_prompt=6",
    "data.min_val_pairs=20",
    "data.max_context=3",
    "data.num_targets=2",
    "data.train_episodes=64",
    "data.val_episodes=16",
    "data.empty_context_share=0",
    "policy.num_layers=2",
    "policy.lora_rank=8",
    "policy.max_response_tokens=24",
    "models=[npdpo]",
    "train.epochs=2",
    "train.lr=3e-4",
    "train.checkpoint_every_steps=4",
    "train.keep=last",
    "eval.context_sizes=[0,3]",
    "eval.num_episodes=32",
]
POLICY_KILLS = [23]
ENCODER_YAML = (
    "data: {num_targets: 4, train_episodes: 640, val_episodes: 64}\n"
    "train: {batch_size: 64, epochs: 1}\neval: {num_episodes: 50}\n"
)


def final_state(folder: Path) -> dict:
    """The metrics of a run's last report (its highest step), from the checkpoints' states."""
    states = [json.loads(p.read_text()) for p in folder.glob("checkpoints/*/*/train_state.json")]
    return max(states, key=lambda s: s["metrics"]["step"])["metrics"]


def one_run(job, recipe, model: str, kill: int | None) -> dict:
    overrides = {"fail_at_step": kill, "max_failures": 1 if kill else 0}
    job = job.model_copy(update={"train": job.train.model_copy(update=overrides)}, deep=True)
    start = time.perf_counter()
    run = run_recipe(job, recipe)
    wall = time.perf_counter() - start
    last = final_state(Path(run.folder))
    result = run.results[model]
    out = {
        "kill_at_step": kill,
        "resumed_at_step": last["start_step"],
        "steps": last["step"],
        "steps_lost": kill - last["start_step"] if kill else 0,
        "wall_s": round(wall, 1),
        "val_nll": result["train_metrics"]["val_nll"],
        "scored_epoch": result["train_metrics"]["epoch"],
        "accuracy": {m: round(s["mean"], 2) for m, s in result["average"].items()},
        "checkpoint": result["checkpoint"],
    }
    log.info("%s", out)
    return out


def compare(runs: list[dict], every: int) -> dict:
    """Each later run's metrics minus the first (uninterrupted) run's; wall time against the
    second, uninterrupted too, which like the killed runs starts with the process warm."""
    base, warm = runs[0], runs[1]
    rows = []
    for run in runs[1:]:
        rows.append(
            {
                "kill_at_step": run["kill_at_step"],
                "steps_lost": run["steps_lost"],
                "steps_lost_within_interval": run["steps_lost"] <= every,
                "val_nll_diff": run["val_nll"] - base["val_nll"],
                "accuracy_diff": {
                    m: round(run["accuracy"][m] - base["accuracy"][m], 2) for m in base["accuracy"]
                },
                "extra_wall_s": round(run["wall_s"] - warm["wall_s"], 1),
            }
        )
    return {"checkpoint_every_steps": every, "runs": runs, "against_first": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, help="write the figures here (JSON)")
    parser.add_argument("--skip-policy", action="store_true", help="the reward job only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ray.init(log_to_driver=False)
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="killed-worker-") as tmp:
        config = ROOT / "configs/synthetic.yaml"
        reward = load_config(config, [f"run.output_dir={tmp}", *REWARD_RUN])
        runs = [one_run(reward, REWARD, "npbtl", kill) for kill in (None, None, *REWARD_KILLS)]
        out["reward"] = compare(runs, reward.train.checkpoint_every_steps)

        if not args.skip_policy:
            encoder_yaml = Path(tmp) / "encoder.yaml"
            encoder_yaml.write_text(ENCODER_YAML)
            policy = load_config(
                ROOT / "configs/steer_policy.yaml",
                [f"run.output_dir={tmp}", *POLICY_RUN, f"policy.encoder_job={encoder_yaml}"],
                PolicyJobConfig,
            )
            first = one_run(policy, POLICY, "npdpo", None)
            # Every later run starts z's encoder from the first run's NP-BTL, trained once.
            encoder = sorted(Path(tmp).glob("*-npbtl-*/metrics.json"))[0]
            init = json.loads(encoder.read_text())["results"]["npbtl"]["checkpoint"]
            update = {"encoder_job": None, "encoder_init": init}
            policy.policy = policy.policy.model_copy(update=update)
            runs = [first, *(one_run(policy, POLICY, "npdpo", k) for k in (None, *POLICY_KILLS))]
            out["policy"] = compare(runs, policy.train.checkpoint_every_steps)
    for job, figures in out.items():
        for row in figures["against_first"]:
            print(job, json.dumps(row))
    if args.out:
        write_json(args.out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
