"""Synthetic benchmark (paper §5.1): BTL, DPL and NP-BTL accuracy vs context size.

Trains each model through the platform's Ray Data → Ray Train → DeepSpeed path with
configs/synthetic.yaml, then scores targets that were never in the context, at 0/1/3/5/10 context
pairs, mean ± SEM over the test episodes. Prints the Bayes limit beside the measured rows: the
closed form 100 − 25·0.5^m for two balanced types, and the exact limit on these very episodes.

  .venv/bin/python benchmarks/synthetic_reward.py --out benchmarks/synthetic_reward.json
"""

from __future__ import annotations

from reward_bench import run_benchmark, write_results

from npalign.evaluation.accuracy import format_table


def main() -> None:
    bench = run_benchmark(__doc__, "configs/synthetic.yaml", "bench-synthetic")
    config, run = bench.config, bench.run
    sizes = config.eval.context_sizes
    reference = {"Bayes 100-25*0.5^m": [100 - 25 * 0.5**m for m in sizes], **run.reference}
    print(
        f"\nseeds: data {config.data.synthetic.seed}, episodes {config.data.seed}, "
        f"train {config.train.seed}, eval {config.eval.seed}; "
        f"{config.eval.num_episodes} test episodes per context size; {bench.minutes:.1f} min"
    )
    print(format_table(run.results, sizes, reference))
    print(f"run folder: {run.folder}")
    write_results(bench, reference=reference)


if __name__ == "__main__":
    main()
