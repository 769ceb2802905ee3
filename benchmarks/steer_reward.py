"""Steer task: pooled BTL, per-type oracle BTLs and NP-BTL on MiniLM embeddings of real text.

Builds (or reuses from the cache) the steer task — concise vs detailed users, every pair one they
disagree on — embeds it with the packaged MiniLM through Ray Data, trains each model through the
platform's Ray Train + DeepSpeed path with configs/steer.yaml, and scores targets never in the
context at 0/1/3/5/10 context pairs, per user type, mean ± SEM over the test episodes. The
oracle for a type is a BTL trained and scored on that type's labels only.

Checks printed at the end: NP-BTL at 10 context pairs within 1 point of each type's oracle;
the pooled BTL near 50 averaged over types.

  .venv/bin/python benchmarks/steer_reward.py --out benchmarks/steer_reward.json
"""

from __future__ import annotations

from reward_bench import run_benchmark, write_results

from npalign.evaluation.accuracy import format_table


def main() -> None:
    bench = run_benchmark(__doc__, "configs/steer.yaml", "bench-steer")
    config, run = bench.config, bench.run
    sizes = config.eval.context_sizes
    print(
        f"\nseeds: steer {config.data.steer.seed}, episodes {config.data.seed}, "
        f"train {config.train.seed}, eval {config.eval.seed}; {config.eval.num_episodes} test "
        f"episodes per context size; {bench.minutes:.1f} min (embeddings cached after the first "
        "run)"
    )
    print(format_table(run.results, sizes))

    checks = {}
    largest = max(sizes)
    if "npbtl" in run.results and "oracle" in run.results:
        for user_type, oracle in run.results["oracle"]["by_type"].items():
            gap = (
                oracle[largest]["mean"]
                - run.results["npbtl"]["by_type"][user_type][largest]["mean"]
            )
            checks[f"npbtl within 1 of oracle [{user_type}] at m={largest}"] = {
                "gap": gap,
                "pass": gap <= 1,
            }
    if "btl" in run.results:
        pooled = [run.results["btl"]["average"][m]["mean"] for m in sizes]
        checks["pooled btl near 50 (45-55) at every m"] = {
            "range": [min(pooled), max(pooled)],
            "pass": all(45 <= p <= 55 for p in pooled),
        }
    for name, check in checks.items():
        print(f"{'PASS' if check['pass'] else 'FAIL'}  {name}: {check}")
    print(f"run folder: {run.folder}")
    write_results(bench, checks=checks)


if __name__ == "__main__":
    main()
