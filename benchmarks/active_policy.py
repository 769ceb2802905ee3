"""Asking the right questions, for the policy: NP-DPO after k chosen questions vs k random ones.

1. A steer policy for four user types on both attributes (concise, detailed, formal, casual;
   `conflicting_only: false`, the tone types with margin 1 as in configs/active_steer.yaml, so
   each pair splits the types two against two and a random question often tells nothing new),
   through the policy recipe with configs/steer_policy.yaml: a *variational* NP-BTL first
   (`policy.latent: variational`), whose encoder z's encoder keeps, then NP-DPO.
2. That NP-BTL chooses each new user's questions from a pool of pairs they labelled (BALD, its
   default, against random), and NP-DPO reads the answers as the user's context
   (`evaluation/policy_questions.py`): implicit-reward accuracy on targets never asked after
   k = 0..10 questions, and the generated attribute for each type after k = 0, 2, 4, paired
   against random by user with a bootstrap over prompts.

Nothing is tuned here: sizes and seeds are fixed, and the policy configuration is the committed
one with the four types. Choose on `--split val`; the test split is scored once for what is
reported. Training takes about 35 minutes on a 2-core CPU box, the study about 25.

  .venv/bin/python benchmarks/active_policy.py --split val              # train, then the study
  .venv/bin/python benchmarks/active_policy.py --run runs/active-policy-... --split test \\
      --out benchmarks/active_policy.json                                # an earlier run, once
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import yaml

from npalign.config import PolicyJobConfig, load_config
from npalign.evaluation.accuracy import save_plot
from npalign.evaluation.policy_questions import (
    accuracy_after_questions,
    generation_after_questions,
    questions_checks,
)
from npalign.files import Location, write_json
from npalign.models.policy import SPEC_FILE, available_device, load_policy
from npalign.models.reward import load_reward_model
from npalign.recipes.outline import run_recipe
from npalign.recipes.policy import POLICY

ROOT = Path(__file__).resolve().parents[1]
FOUR_TYPES = [
    "data.steer.types=["
    "{name: concise, attribute: length, prefers: lower, margin: 10},"
    "{name: detailed, attribute: length, prefers: higher, margin: 10},"
    "{name: formal, attribute: formality, prefers: higher, margin: 1},"
    "{name: casual, attribute: formality, prefers: lower, margin: 1}]",
    "data.steer.conflicting_only=false",
    "policy.latent=variational",
    # One episode per type in each micro-batch of a paired group: 4 on each of 2 workers, and
    # the two-type configuration's 96 steps.
    "train.batch_size=8",
    "data.train_episodes=768",
    "models=[npdpo]",
    "run.name=active-policy",
]
SELECTORS = ["random", "bald"]
# Each scored target costs NP-DPO about a second on 2 CPU cores per k and selector.
ACCURACY_KS = [0, 1, 2, 4, 10]
GENERATION_KS = [0, 2, 4]
USERS, POOL, TARGETS, PROMPTS, SEED = 64, 40, 2, 16, 0


def plot(accuracy: dict, generation: dict, path: Path) -> None:
    """Implicit accuracy vs questions asked (NP-DPO and its NP-BTL), and each type's signed
    generated move from k = 0, per selector."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    types = generation["by_type"]
    fig, axes = plt.subplots(1, 1 + len(types), figsize=(4.5 * (1 + len(types)), 4))
    ks = accuracy["ks"]
    for model, style in (("npdpo", "-"), ("npbtl", ":")):
        for selector, by_k in accuracy[model]["accuracy"].items():
            axes[0].plot(ks, [s["mean"] for s in by_k], style, marker="o", ms=3,
                         label=f"{model}, {selector}")  # fmt: skip
            axes[0].fill_between(ks, [s["low"] for s in by_k], [s["high"] for s in by_k],
                                 alpha=0.12)  # fmt: skip
    axes[0].set(title="targets never asked", xlabel="questions asked", ylabel="accuracy (%)")
    axes[0].legend(fontsize=7)
    for ax, (name, result) in zip(axes[1:], types.items(), strict=True):
        gen_ks = generation["ks"]
        for selector, by_k in result["move"].items():
            ax.errorbar(
                gen_ks,
                [by_k[k]["mean"] for k in gen_ks],
                yerr=[
                    [by_k[k]["mean"] - by_k[k]["low"] for k in gen_ks],
                    [by_k[k]["high"] - by_k[k]["mean"] for k in gen_ks],
                ],
                marker="o",
                capsize=3,
                label=selector,
            )
        ax.axhline(0, color="grey", lw=0.5)
        ax.set(title=f"{name} users", xlabel="questions asked",
               ylabel=f"{result['attribute']}, toward their preference")  # fmt: skip
        ax.legend(fontsize=7)
    save_plot(fig, axes[0], path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(ROOT / "configs/steer_policy.yaml"))
    parser.add_argument("--split", choices=["val", "test"], default="test")
    parser.add_argument(
        "--run", type=Path, help="study the policy of this earlier run folder: no training"
    )
    parser.add_argument("--out", help="write the results as JSON here (and a .png beside it)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the policy config")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    started = time.perf_counter()
    split = [f"eval.split={args.split}"]
    if args.run:
        job = load_config(args.run / "config.yaml", [*args.overrides, *split], PolicyJobConfig)
        folder = Location(args.run)
        checkpoint = json.loads((folder / "metrics.json").read_text())["results"]["npdpo"]
    else:
        overrides = [*FOUR_TYPES, *args.overrides, *split]
        job = load_config(args.config, overrides, PolicyJobConfig)
        run = run_recipe(job, POLICY)
        folder, checkpoint = run.folder, run.results["npdpo"]
    checkpoint = checkpoint["checkpoint"]
    spec = json.loads((Location(checkpoint) / SPEC_FILE).read_text())
    if not spec.get("initialised_from"):
        parser.error(f"{checkpoint}: z's encoder did not start from an NP-BTL, none can ask")
    reward = load_reward_model(spec["initialised_from"])  # the NP-BTL z's encoder was kept from
    policy = load_policy(checkpoint, available_device())
    splits = POLICY.load(job)
    pairs = splits.pairs[args.split]
    accuracy = accuracy_after_questions(
        reward, policy, pairs, splits.tokens[args.split], SELECTORS, ACCURACY_KS,
        USERS, POOL, TARGETS, SEED,
    )  # fmt: skip
    generation = generation_after_questions(
        reward, policy, job, splits.text[args.split], pairs, SELECTORS, GENERATION_KS,
        PROMPTS, POOL, args.max_new_tokens, SEED,
    )  # fmt: skip
    checks = questions_checks(accuracy, generation)
    minutes = (time.perf_counter() - started) / 60

    print(f"\n{args.split} split, {USERS} users, pools of {POOL}, {TARGETS} targets each")
    print(f"{'':<26}" + "".join(f"{f'k={k}':>8}" for k in ACCURACY_KS))
    for model in ("npdpo", "npbtl"):
        for selector, by_k in accuracy[model]["accuracy"].items():
            print(f"{f'{model}, {selector}':<26}" + "".join(f"{s['mean']:8.1f}" for s in by_k))
    print(f"\nGenerated attribute ({PROMPTS} prompts, greedy), mean at k = {GENERATION_KS}:")
    for name, result in generation["by_type"].items():
        attribute = result["attribute"]
        for selector, by_k in result["answers"].items():
            print(
                f"{f'{name} ({attribute}), {selector}':<34}"
                + "".join(f"{by_k[k]['mean']:8.2f}" for k in GENERATION_KS)
            )
    for name, check in checks.items():
        print(f"{'PASS' if check['pass'] else 'FAIL'}  {name}: {check}")
    print(f"run folder: {folder}; {minutes:.1f} min")
    if args.out:
        out = Path(args.out)
        write_json(
            out,
            {
                "config": yaml.safe_load((folder / "config.yaml").read_text()),
                "split": args.split,
                "minutes": minutes,
                "accuracy": accuracy,
                "generation": generation,
                "checks": checks,
            },
        )
        plot(accuracy, generation, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
