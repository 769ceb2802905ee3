"""Steer task, NP-DPO vs pooled DPO on SmolLM2-135M-Instruct (all 30 blocks, packaged, offline).

1. The policy recipe as `jobs/train_policy.py` runs it (`recipes/policy.py`): first NP-BTL on
   the policy's pairs (MiniLM embeddings, configs/steer_encoder.yaml), whose context encoder
   starts z's encoder; then NP-DPO and pooled DPO through the platform's Ray Train + DeepSpeed
   ZeRO-2 path with configs/steer_policy.yaml.
2. Implicit-reward accuracy per user type at 0/1/3/5/10 context pairs on test targets never in
   the context (the recipe's evaluation: mean ± SEM over test episodes).
3. What the policies *generate* (`evaluation/generation.py`): greedy answers to held-out test
   prompts for users of each type given m of their test-split choices, scored with the steer
   task's attribute scorer, against pooled DPO and the base model, with the degenerate-text
   check; the checks printed at the end.

Costs against TRL and HF generate: benchmarks/policy_cost.py. About 45 minutes on a 2-core CPU
box, plus ~3 minutes the first time to embed the task's texts.

  .venv/bin/python benchmarks/steer_policy.py --out benchmarks/steer_policy.json
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from npalign.config import PolicyJobConfig, load_config
from npalign.evaluation.generation import (
    accuracy_checks,
    generation_checks,
    generation_study,
    plot_generation,
)
from npalign.files import write_json
from npalign.recipes.outline import run_recipe
from npalign.recipes.policy import POLICY

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(ROOT / "configs/steer_policy.yaml"))
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument(
        "--prompts", type=int, default=16, help="test prompts generated per user type and m"
    )
    parser.add_argument("--max-new-tokens", type=int, default=128, help="for the generation study")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the policy config")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    job = load_config(args.config, ["run.name=bench-policy", *args.overrides], PolicyJobConfig)

    started = time.perf_counter()
    policy = run_recipe(job, POLICY)
    sizes = job.eval.context_sizes
    checks = accuracy_checks(policy.results, sizes)
    fit_minutes = (time.perf_counter() - started) / 60

    checkpoints = {kind: r["checkpoint"] for kind, r in policy.results.items()}
    text, pairs = policy.splits.text["test"], policy.splits.pairs["test"]
    study = generation_study(job, checkpoints, text, pairs, args.prompts, args.max_new_tokens)
    checks.update(generation_checks(study, job))
    plot_generation(study, job, policy.folder / "generated_attribute.png")
    minutes = (time.perf_counter() - started) / 60

    print(
        f"\nseeds: steer {job.data.steer.seed}, episodes {job.data.seed}, train {job.train.seed}, "
        f"eval {job.eval.seed}; {job.eval.num_episodes} test episodes per m, "
        f"{job.data.num_targets} target pair(s) each; fits {fit_minutes:.1f} min, "
        f"total {minutes:.1f} min"
    )
    print(f"\n{policy.report}")
    attribute = job.data.steer.types[0].attribute
    print(
        f"\nGenerated {attribute} (mean ± SEM over {study['prompts']} test prompts, greedy, "
        f"≤ {study['max_new_tokens']} new tokens):"
    )
    print(f"{'':<26}" + "".join(f"{f'm={m}':>14}" for m in sizes))
    for name, by_m in study["npdpo"].items():
        print(
            f"{f'npdpo [{name} users]':<26}"
            + "".join(f"{by_m[m]['mean']:7.1f} ± {by_m[m]['sem']:4.1f}" for m in sizes)
        )
    for label in ("dpo", "base"):
        s, name = study[label][attribute], "dpo (pooled)" if label == "dpo" else label
        print(f"{name:<26}{s['mean']:7.1f} ± {s['sem']:4.1f}  (context-blind)")
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
                "config": job.model_dump(mode="json"),
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
