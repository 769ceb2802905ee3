"""Asking the right questions: how many chosen questions identify a new user, against random ones.

For each task a variational NP-BTL is trained through the reward recipe (configs/active_*.yaml),
then `npalign.evaluation.questions.questions_study` runs on the test split (`--split val` to
choose on): 300 simulated users, each with 20 scored targets and a disjoint pool of 100 pairs they
labelled; the context starts empty and grows by one answered question at a time, chosen by BALD
(the default for a variational latent), EPIG, lookahead (EPIG through the encoder; the default
for a deterministic one), predictive entropy or at random — the same users, pools and targets for
every selector, compared pair by pair with random (95 % intervals from a bootstrap over the
targets' prompts). Nothing is tuned here: selectors, sizes and seeds are fixed.

- synthetic: six single-peaked user types whose preferences agree on most pairs.
- steer: concise, detailed, formal and casual users on every pair none of them sees as a tie.

Checks printed at the end, per task, on the model's default selector: it reaches random's
accuracy after 10 questions in at most 4 questions; its paired difference from random is ≥ 0 at
every k, its interval never wholly below 0. Also the time to score 1,000 candidates for one user
(BALD and EPIG with 64 samples of z, EPIG and lookahead with 64 probes).

  .venv/bin/python benchmarks/active_questions.py --split val --out val.json   # train, choose
  .venv/bin/python benchmarks/active_questions.py --checkpoint synthetic CHECKPOINT \
      --checkpoint steer CHECKPOINT --out benchmarks/active_questions.json   # test, once
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch

from npalign.active import Pool, default_selector, question_scores
from npalign.config import load_config
from npalign.evaluation.questions import plot_questions, questions_study
from npalign.files import write_json
from npalign.models.reward import load_reward_model
from npalign.recipes.outline import run_recipe
from npalign.recipes.reward import REWARD

ROOT = Path(__file__).resolve().parents[1]
TASKS = {"synthetic": "configs/active_synthetic.yaml", "steer": "configs/active_steer.yaml"}
SELECTORS = ["random", "entropy", "bald", "epig", "lookahead"]
SAMPLING = ("bald", "epig")  # these need a variational latent
USERS, POOL, TARGETS, QUESTIONS, SEED = 300, 100, 20, 10, 0


def selection_seconds(model, dim: int, selector: str, candidates: int = 1000) -> float:
    """Median wall time to score `candidates` pairs for one user with 5 context pairs."""
    rng = torch.Generator().manual_seed(0)
    pool = Pool(
        torch.randn(1, 5, dim, generator=rng),
        torch.randn(1, 5, dim, generator=rng),
        torch.ones(1, 5, dtype=torch.bool),
        torch.randn(1, candidates, dim, generator=rng),
        torch.randn(1, candidates, dim, generator=rng),
        torch.ones(1, candidates, dtype=torch.bool),
    )
    times = []
    for _ in range(7):
        start = time.perf_counter()
        question_scores(model, pool, selector)
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))


def checks_of(study: dict, active: str) -> dict:
    """The checks on `active`, the model's default selector."""
    match = study["questions_to_match"][active]
    behind = [k for k, d in enumerate(study["vs_random"][active]) if d["mean"] < 0 or d["high"] < 0]
    return {
        # Random must gain from its questions, or matching it says nothing (needed would be 0).
        f"{active} needs <= 4 questions for random's accuracy at 10": {
            **match,
            "random_gain": study["random_gain"],
            "pass": study["random_gain"] > 0
            and match["needed"] is not None
            and 1 <= match["needed"] <= 4,
        },
        f"{active} >= random at every k (paired)": {"behind_at": behind, "pass": not behind},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", help="write the results as JSON here (and a .png beside it)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument(
        "--checkpoint",
        nargs=2,
        action="append",
        metavar=("TASK", "FOLDER"),
        help="score an NP-BTL trained earlier for TASK instead of training one",
    )
    parser.add_argument(
        "--split",
        choices=["val", "test"],
        default="test",
        help="the split the simulated users come from: val to choose on, test to report once",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    given = dict(args.checkpoint or [])
    out: dict = {
        "selectors": SELECTORS,
        "users": USERS,
        "pool": POOL,
        "targets": TARGETS,
        "split": args.split,
    }
    studies = {}
    for task in args.tasks:
        start = time.perf_counter()
        # The recipe scores its NP-BTL by context size on the same split as the study.
        config = load_config(ROOT / TASKS[task], [f"eval.split={args.split}"])
        if task in given:
            checkpoint, splits, accuracy = given[task], REWARD.load(config), None
        else:
            run = run_recipe(config, REWARD)
            checkpoint, splits = run.results["npbtl"]["checkpoint"], run.splits
            accuracy = run.results["npbtl"]["average"]
        model = load_reward_model(checkpoint)
        pairs = splits.pairs[args.split]
        active = default_selector(model)
        selectors = [s for s in SELECTORS if s not in SAMPLING or model.variational]
        study = questions_study(model, pairs, selectors, USERS, POOL, TARGETS, QUESTIONS, SEED)
        study["select_1000_s"] = {
            s: selection_seconds(model, pairs.feature_dim, s)
            for s in ("epig", "bald", "lookahead")
            if s in selectors
        }
        checks = checks_of(study, active)
        studies[task] = study
        out[task] = {
            "config": config.model_dump(mode="json"),
            "checkpoint": str(checkpoint),
            "default_selector": active,
            "npbtl_by_context": accuracy,
            "study": study,
            "checks": checks,
            "minutes": (time.perf_counter() - start) / 60,
        }
        print(f"\n{task}: accuracy after k questions (mean over {USERS} users' targets)")
        for selector, by_k in study["accuracy"].items():
            print(f"  {selector:<10}" + " ".join(f"{s['mean']:6.1f}" for s in by_k))
        print(f"  questions to reach random's at {QUESTIONS}: {study['questions_to_match']}")
        print(f"  questions to 95 % of it: {study['questions_to_95']}")
        print(f"  seconds to score 1,000 candidates: {study['select_1000_s']}")
        for name, check in checks.items():
            print(f"{'PASS' if check['pass'] else 'FAIL'}  {task}: {name}: {check}")
    if args.out:
        write_json(args.out, out)
        plot_questions(studies, Path(args.out).with_suffix(".png"))


if __name__ == "__main__":
    main()
