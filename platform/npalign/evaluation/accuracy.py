"""Accuracy vs context size on held-out episodes: targets only, never a pair from the context.

Results are mean ± SEM over test episodes, per user type and averaged over types (the mean of the
type means, so an unbalanced draw of users does not tilt the average), each with a 95 % interval
from a bootstrap over the targets' prompts (`statistics.py`: episodes share prompts, so the SEM
is too narrow), and the paired change of each type's accuracy between context sizes; reported as
a table and a plot, written atomically.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from npalign.config import EvalConfig
from npalign.data.episodes import collate, context_prefix, episode_arrays, sample_episodes
from npalign.data.preferences import PairTable
from npalign.evaluation.statistics import mean_sem, type_means
from npalign.files import Location, atomic_path

log = logging.getLogger(__name__)


def _summary(values: np.ndarray) -> dict[str, float]:
    summary = mean_sem(values)
    return {"mean": summary["mean"], "sem": summary["sem"], "episodes": summary["n"]}


def combine_types(per_type: list[dict[str, float]]) -> dict[str, float]:
    means = np.array([s["mean"] for s in per_type])
    sems = np.array([s["sem"] for s in per_type])
    return {
        "mean": float(means.mean()),
        "sem": float(np.sqrt((sems**2).sum()) / len(sems)),
        "episodes": int(sum(s["episodes"] for s in per_type)),
    }


def evaluation_episodes(
    pairs: PairTable, context_sizes: list[int], num_episodes: int, num_targets: int, seed: int
) -> dict[int, pa.Table]:
    """Test episodes for every context size, drawn from `pairs` (the test split): one draw of
    users, targets and a context of the largest size, and for each size m the first m pairs of
    that context. Accuracy at a larger m is then measured on the same users and targets with
    more of their choices, so a change between sizes is the context's doing, not a new draw's."""
    largest = max(context_sizes)
    episodes = sample_episodes(
        pairs, num_episodes, largest, largest, num_targets, seed, source="test split"
    )
    return {m: context_prefix(episodes, m) for m in context_sizes}


@torch.no_grad()
def target_accuracy(
    model: nn.Module, pairs: PairTable, episodes, batch_size: int = 500
) -> np.ndarray:
    """100 for each target predicted right, else 0: (episodes, targets)."""
    model.eval()
    rows = episode_arrays(episodes)
    out = []
    for start in range(0, len(rows["target"]), batch_size):
        batch = collate({k: v[start : start + batch_size] for k, v in rows.items()}, pairs)
        output = model(batch)
        says_b = (output.log_prob_b > output.log_prob_a).float()  # (batch, targets)
        out.append((says_b == batch.target_choice).float().numpy() * 100)
    return np.concatenate(out)


def evaluate_by_context(
    score: Callable[[pa.Table], np.ndarray],
    pairs: PairTable,
    settings: EvalConfig,
    num_targets: int,
    context_blind: bool = False,
) -> dict:
    """For any model, given `score`: an episode table → 100 or 0 per target (episodes, targets):

        {"average": {m: summary}, "by_type": {type: {m: summary}},
         "change": {"a->b": {type or "average": interval}}}

    A summary holds the mean, its SEM over episodes, the episode count and "ci", the prompt
    bootstrap's 95 % interval (`average` also "sum": A + B for two types, with its interval).
    "change" is each type's paired accuracy change from one context size to the next, and from
    the smallest to the largest (the same targets, the same bootstrap draws).

    Every m scores the same users and targets (`evaluation_episodes`), so a `context_blind` model
    (one that never reads the context: pooled or per-type baselines) scores the same at every
    m: it is scored once and that summary is reported at every m; for a costly model (a
    policy) this saves a full pass per context size."""
    result: dict = {"average": {}, "by_type": {}, "change": {}}
    sizes = settings.context_sizes
    episodes_by_m = evaluation_episodes(
        pairs, sizes, settings.num_episodes, num_targets, settings.seed
    )
    first = episodes_by_m[sizes[0]]
    types = np.asarray(first.column("user_type").to_pylist())  # (episodes,), the same at every m
    target_rows = episode_arrays(first)["target"]  # (episodes, targets)
    target_types = np.repeat(types, target_rows.shape[1])
    target_prompts = pairs.prompt_id[target_rows.reshape(-1)]

    def intervals(values: np.ndarray) -> dict:
        return type_means(values.reshape(-1), target_types, target_prompts, settings.seed)

    correct: dict[int, np.ndarray] = {}
    for m in sizes:
        if not correct or not context_blind:
            started = time.perf_counter()
            correct[m] = score(episodes_by_m[m])
            log.info(
                "scored %d %s episodes with %d context pairs: %.1f %% (%.0f s)",
                len(correct[m]),
                settings.split,
                m,
                correct[m].mean(),
                time.perf_counter() - started,
            )
        else:
            correct[m] = correct[sizes[0]]
        accuracy = correct[m].mean(1)  # (episodes,)
        boot = intervals(correct[m])
        per_type = []
        for user_type in sorted(set(types)):
            summary = _summary(accuracy[types == user_type])
            summary["ci"] = [boot[user_type]["low"], boot[user_type]["high"]]
            result["by_type"].setdefault(user_type, {})[m] = summary
            per_type.append(summary)
        result["average"][m] = combine_types(per_type)
        result["average"][m]["ci"] = [boot["average"]["low"], boot["average"]["high"]]
        result["average"][m]["sum"] = boot["sum"]
    steps = list(zip(sizes[:-1], sizes[1:], strict=True)) + [(sizes[0], sizes[-1])]
    for a, b in dict.fromkeys(steps):
        change = intervals(correct[b] - correct[a])
        result["change"][f"{a}->{b}"] = {k: v for k, v in change.items() if k != "sum"}
    return result


def evaluate_reward_model(
    model: nn.Module, pairs: PairTable, settings: EvalConfig, num_targets: int
) -> dict:
    return evaluate_by_context(
        lambda episodes: target_accuracy(model, pairs, episodes), pairs, settings, num_targets
    )


def format_table(
    results: dict[str, dict],
    context_sizes: list[int],
    reference: dict[str, list[float]] | None = None,
) -> str:
    """One row per model (averaged over types), then one per (model, type); `reference` adds rows
    such as the Bayes limit. A cell is the mean and its prompt-bootstrap 95 % interval, or
    mean ± SEM where there is none (an oracle's average of separately scored types)."""
    head = f"{'model':<22}" + "".join(f"{f'm={m}':>22}" for m in context_sizes)
    lines = [head, "-" * len(head)]

    def cell(s: dict) -> str:
        if "ci" in s:
            return f"{s['mean']:6.2f} [{s['ci'][0]:5.1f}, {s['ci'][1]:5.1f}]"
        return f"{s['mean']:6.2f} ± {s['sem']:4.2f}"

    def row(label: str, by_m: dict) -> str:
        return f"{label:<22}" + "".join(f"{cell(by_m[m]):>22}" for m in context_sizes)

    for name, result in results.items():
        lines.append(row(name, result["average"]))
    for name, result in results.items():
        for user_type, by_m in result["by_type"].items():
            lines.append(row(f"{name} [{user_type}]", by_m))
    for name, values in (reference or {}).items():
        lines.append(f"{name:<22}" + "".join(f"{v:>22.2f}" for v in values))
    return "\n".join(lines)


def plot_accuracy(
    results: dict[str, dict],
    context_sizes: list[int],
    path: str | Path | Location,
    reference: dict[str, list[float]] | None = None,
) -> None:
    """Accuracy vs context size with 95 % interval bars (± SEM where there is no interval), one
    line per model; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, result in results.items():
        by_m = [result["average"][m] for m in context_sizes]
        means = np.array([s["mean"] for s in by_m])
        low = [s["mean"] - s["ci"][0] if "ci" in s else s["sem"] for s in by_m]
        high = [s["ci"][1] - s["mean"] if "ci" in s else s["sem"] for s in by_m]
        ax.errorbar(context_sizes, means, yerr=[low, high], marker="o", capsize=3, label=name)
    for name, values in (reference or {}).items():
        ax.plot(context_sizes, values, "k--", label=name)
    ax.set_xlabel("context pairs (m)")
    ax.set_ylabel("target accuracy (%)")
    ax.set_xticks(context_sizes)
    save_plot(fig, ax, path)


def save_plot(fig, ax, path: str | Path | Location) -> None:
    """Grid and legend (where something is labelled) on `ax` (one axes or several), layout, then
    the PNG written atomically; the figure is closed."""
    import matplotlib.pyplot as plt

    for each in np.ravel(ax):
        each.grid(alpha=0.3)
        if each.get_legend_handles_labels()[0]:
            each.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
