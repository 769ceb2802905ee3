"""Steer task, NP-DPO vs pooled DPO on SmolLM2-135M-Instruct (all 30 blocks, packaged, offline).

1. The policy recipe as `jobs/train_policy.py` runs it (`recipes/policy.py`): first NP-BTL on
   the policy's pairs (MiniLM embeddings, configs/steer_encoder.yaml), whose context encoder
   starts z's encoder; then NP-DPO and pooled DPO through the platform's Ray Train + DeepSpeed
   ZeRO-2 path with configs/steer_policy.yaml.
2. Implicit-reward accuracy per user type at 0/1/3/5/10 context pairs on targets never in the
   context (the recipe's evaluation, with intervals from a bootstrap over prompts), against
   the per-type DPO oracle (one DPO per user type, trained on that type's labels only).
3. What the policies *generate* (`evaluation/generation.py`): greedy answers to held-out
   prompts for users of each type given m of their choices on other prompts, scored with the
   steer task's attribute scorer, against pooled DPO and the base model, with the degenerate-text
   check; the checks printed at the end.

Everything is scored on `eval.split`: choose settings with `eval.split=val`, then score the test
split once for what is reported. Costs against TRL and HF generate: benchmarks/policy_cost.py.
About 70 minutes on a 2-core CPU box, plus ~3 minutes the first time to embed the task's texts.

  .venv/bin/python benchmarks/steer_policy.py --types formality eval.split=val   # choosing
  .venv/bin/python benchmarks/steer_policy.py --run RUN_FOLDER eval.split=test    # scored once
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import yaml

from npalign.config import PolicyJobConfig, load_config
from npalign.evaluation.generation import (
    accuracy_checks,
    generation_checks,
    generation_study,
    plot_generation,
)
from npalign.files import write_json
from npalign.recipes.outline import rescore_run, run_recipe
from npalign.recipes.policy import POLICY

ROOT = Path(__file__).resolve().parents[1]

_LENGTH = [
    "{name: concise, attribute: length, prefers: lower, margin: 10}",
    "{name: detailed, attribute: length, prefers: higher, margin: 10}",
]
_FORMALITY = [
    "{name: formal, attribute: formality, prefers: higher, margin: 0}",
    "{name: casual, attribute: formality, prefers: lower, margin: 0}",
]
# The steer task's attribute pairs and a three-type mix, each under the one committed
# configuration. The mix's step holds one episode per type in each micro-batch of a paired group
# (3 on each of 2 workers) for the same 96 steps.
TYPE_SETS = {
    "length": [f"data.steer.types=[{', '.join(_LENGTH)}]"],
    "formality": [f"data.steer.types=[{', '.join(_FORMALITY)}]"],
    "mix": [
        f"data.steer.types=[{', '.join([*_LENGTH, _FORMALITY[0]])}]",
        "train.batch_size=6",
        "data.train_episodes=576",
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(ROOT / "configs/steer_policy.yaml"))
    parser.add_argument(
        "--types",
        choices=TYPE_SETS,
        default="length",
        help="the steer users: concise/detailed (length), formal/casual (formality), or "
        "concise/detailed/formal (mix); with --run, the run's own",
    )
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument(
        "--prompts", type=int, default=16, help="test prompts generated per user type and m"
    )
    parser.add_argument("--max-new-tokens", type=int, default=128, help="for the generation study")
    parser.add_argument(
        "--run",
        type=Path,
        help="score the fitted policies of this earlier run folder again (its config.yaml plus "
        "the overrides, e.g. eval.split=test policy.decoding.no_repeat_ngram_size=3): no training",
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the policy config")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.run:
        job = load_config(args.run / "config.yaml", args.overrides, PolicyJobConfig)
    else:
        # The per-type DPO oracle is what NP-DPO is measured against.
        defaults = [f"run.name=bench-policy-{args.types}", "models=[npdpo,dpo,oracle]"]
        overrides = [*defaults, *TYPE_SETS[args.types], *args.overrides]
        job = load_config(args.config, overrides, PolicyJobConfig)

    if not {"npdpo", "dpo"} <= set(job.models):
        parser.error(f"models must hold npdpo and dpo (the study compares them), not {job.models}")

    started = time.perf_counter()
    policy = rescore_run(job, POLICY, args.run) if args.run else run_recipe(job, POLICY)
    sizes = job.eval.context_sizes
    checks = accuracy_checks(policy.results, sizes)
    fit_minutes = (time.perf_counter() - started) / 60

    checkpoints = {kind: r["checkpoint"] for kind, r in policy.results.items()}
    split = job.eval.split
    text, pairs = policy.splits.text[split], policy.splits.pairs[split]
    study = generation_study(job, checkpoints, text, pairs, args.prompts, args.max_new_tokens)
    checks.update(generation_checks(study, job))
    plot_generation(study, job, policy.folder / f"generated_attribute_{split}.png")
    minutes = (time.perf_counter() - started) / 60

    print(
        f"\nseeds: steer {job.data.steer.seed}, episodes {job.data.seed}, train {job.train.seed}, "
        f"eval {job.eval.seed}; {job.eval.num_episodes} test episodes per m, "
        f"{job.data.num_targets} target pair(s) each; fits {fit_minutes:.1f} min, "
        f"total {minutes:.1f} min"
    )
    print(f"\n{policy.report}")
    print(
        f"\nGenerated attribute (mean ± SEM over {study['prompts']} {split} prompts, greedy, "
        f"≤ {study['max_new_tokens']} new tokens):"
    )
    print(f"{'':<34}" + "".join(f"{f'm={m}':>14}" for m in sizes))
    for user_type in job.data.steer.types:
        by_m = study["npdpo"][user_type.name]
        print(
            f"{f'npdpo [{user_type.name} users] {user_type.attribute}':<34}"
            + "".join(f"{by_m[m]['mean']:7.1f} ± {by_m[m]['sem']:4.1f}" for m in sizes)
        )
    for attribute in study["dpo"]:
        for label in ("dpo", "base"):
            s, name = study[label][attribute], "dpo (pooled)" if label == "dpo" else label
            print(f"{f'{name} {attribute}':<34}{s['mean']:7.1f} ± {s['sem']:4.1f}  (context-blind)")
    print(f"\nprompt: {study['prompt_0']}")
    for name, text in study["samples"].items():
        if name.endswith(f"m={max(sizes)}") or not name.startswith("npdpo"):
            print(f"--- {name}: {text}")
    for name, check in checks.items():
        print(f"{'PASS' if check['pass'] else 'FAIL'}  {name}: {check}")
    print(f"run folder: {policy.folder}")
    if args.out:
        write_json(
            args.out,
            {
                # As run: with the NP-BTL checkpoint that started z's encoder.
                "config": yaml.safe_load((policy.folder / "config.yaml").read_text()),
                "split": split,
                "minutes": minutes,
                "context_sizes": sizes,
                "implicit_accuracy": {
                    k: {"average": v["average"], "by_type": v["by_type"]}
                    for k, v in policy.results.items()
                },
                "generation": study,
                "checks": checks,
            },
        )


if __name__ == "__main__":
    main()
