"""The main job: train the reward models and the steerable policy, then serve it to two users.

  python jobs/demo.py                                   # what `make demo` runs
  python jobs/demo.py --set policy:train.epochs=1 --set serve:port=8001 --context 3

Stages (details: platform/npalign/demo.py): BTL, DPL and NP-BTL on the synthetic task
(--reward-config) → NP-BTL on the steer task → NP-DPO on SmolLM2 (--policy-config; its context
encoder starts from that NP-BTL) → the Ray Serve endpoint (--serve-config) on 127.0.0.1: a
concise and a detailed user each store --context of their choices, ask the same question, and
both answers are printed; then the endpoint stops.

`--set STAGE:key=value` overrides one stage's config (STAGE: reward, policy or serve), e.g.
`--set policy:policy.num_layers=4`. All configs are checked before anything runs. Prints each
stage's table and the demo folder holding every stage's run folder, summary.txt and
answers.json.
"""

from __future__ import annotations

import sys

from npalign.cli import job_parser, run_checked
from npalign.config import (
    ConfigError,
    PolicyJobConfig,
    RewardJobConfig,
    ServeConfig,
    load_config,
)
from npalign.demo import run_demo

STAGES = {"reward": RewardJobConfig, "policy": PolicyJobConfig, "serve": ServeConfig}


def main(argv: list[str] | None = None) -> int:
    parser = job_parser(__doc__)
    parser.add_argument("--reward-config", default="configs/synthetic.yaml", help="stage 1")
    parser.add_argument("--policy-config", default="configs/steer_policy.yaml", help="stage 3")
    parser.add_argument("--serve-config", default="configs/serve.yaml", help="the endpoint")
    parser.add_argument("--context", type=int, default=5, help="choices each demo user gives")
    parser.add_argument("--new-tokens", type=int, default=96, help="length limit of the answers")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="STAGE:KEY=VALUE",
        help="override a field of one stage's config (repeatable)",
    )
    args = parser.parse_args(argv)

    def configs():
        overrides: dict[str, list[str]] = {stage: [] for stage in STAGES}
        for item in args.set:
            stage, _, override = item.partition(":")
            if stage not in STAGES or not override:
                raise ConfigError(
                    f"--set {item!r}: expected STAGE:key=value, STAGE in {list(STAGES)}"
                )
            overrides[stage].append(override)
        files = {
            "reward": args.reward_config,
            "policy": args.policy_config,
            "serve": args.serve_config,
        }
        # The endpoint's checkpoints come from the policy stage: a placeholder until then.
        overrides["serve"].insert(0, "policy=pending")
        loaded = {s: load_config(files[s], overrides[s], STAGES[s]) for s in STAGES}
        if "npdpo" not in loaded["policy"].models:
            raise ConfigError(f"{files['policy']}: models must include npdpo (the served policy)")
        return loaded

    def run():
        c = configs()
        return run_demo(c["reward"], c["policy"], c["serve"], args.context, args.new_tokens)

    result = run_checked(run)
    if result is None:
        return 2
    print(result.table)
    print(f"demo folder: {result.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
