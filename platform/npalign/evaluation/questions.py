"""How fast chosen questions identify a user: target accuracy after k questions, k = 0..K.

For each simulated test user (an episode of the test split: a user, `num_targets` scored
targets and a disjoint pool of `pool_size` other pairs that user labelled), the context starts
empty; at each step a selector picks a pool pair not asked yet, the user answers it with their
own label, and the targets are scored with the context so far. Every selector sees the same
users, pools and targets, so its accuracy at each k is compared with random's pair by pair:
differences and intervals come from a bootstrap over the targets' prompts (`statistics.py`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from npalign.active import Pool, next_questions
from npalign.data.episodes import PADDING, collate, episode_arrays, sample_episodes
from npalign.data.preferences import PairTable
from npalign.evaluation.accuracy import save_plot
from npalign.evaluation.statistics import mean_interval

log = logging.getLogger(__name__)


@torch.no_grad()
def ask(
    model: nn.Module,
    pairs: PairTable,
    pool_rows: np.ndarray,
    selector: str,
    questions: int,
    seed: int,
) -> np.ndarray:
    """(users, questions) pair rows: for each user (a row of `pool_rows`, pair rows they
    labelled), `questions` pairs of their pool asked one at a time, each chosen by `selector`
    given their own answers to the questions before it."""
    if questions > pool_rows.shape[1]:
        raise ValueError(
            f"{questions} questions from a pool of {pool_rows.shape[1]}: a pair would repeat"
        )
    model.eval()
    users = len(pool_rows)
    generator = torch.Generator().manual_seed(seed)
    asked = np.full((users, questions), PADDING, dtype=np.int64)
    available = torch.ones(pool_rows.shape, dtype=torch.bool)
    candidate_a = torch.from_numpy(pairs.features_a[pool_rows])
    candidate_b = torch.from_numpy(pairs.features_b[pool_rows])
    no_targets = np.full((users, 1), PADDING, dtype=np.int64)
    for k in range(questions):
        batch = collate({"context": asked[:, : max(k, 1)], "target": no_targets}, pairs)
        pool = Pool(
            batch.context_chosen,
            batch.context_rejected,
            batch.context_mask,
            candidate_a,
            candidate_b,
            available,
        )
        index, _ = next_questions(model, pool, selector, generator)
        asked[:, k] = pool_rows[np.arange(users), index.numpy()]
        available[torch.arange(users), index] = False
    return asked


@torch.no_grad()
def score_asked(
    model: nn.Module, pairs: PairTable, asked: np.ndarray, target_rows: np.ndarray
) -> np.ndarray:
    """(questions + 1, users, targets) 100/0: each user's targets scored after their first k
    answered questions, k = 0..questions."""
    model.eval()
    correct = []
    for k in range(asked.shape[1] + 1):
        context = asked[:, : max(k, 1)].copy()
        context[:, k:] = PADDING  # k = 0: no context (collate needs one column)
        batch = collate({"context": context, "target": target_rows}, pairs)
        out = model(batch)
        says_b = (out.log_prob_b > out.log_prob_a).float()
        correct.append((says_b == batch.target_choice).float().numpy() * 100)
    return np.stack(correct)


def ask_and_score(
    model: nn.Module,
    pairs: PairTable,
    pool_rows: np.ndarray,
    target_rows: np.ndarray,
    selector: str,
    questions: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(correct (questions + 1, users, targets) 100/0, asked (users, questions) pair rows)."""
    asked = ask(model, pairs, pool_rows, selector, questions, seed)
    return score_asked(model, pairs, asked, target_rows), asked


def questions_study(
    model: nn.Module,
    pairs: PairTable,
    selectors: list[str],
    users: int,
    pool_size: int,
    num_targets: int,
    questions: int,
    seed: int,
    chunk: int = 50,
) -> dict:
    """Accuracy after k = 0..questions chosen questions for each selector, on the same simulated
    users, pools and targets; with "random" among them, each other selector's paired difference
    from it and the questions it needs to reach random's final accuracy.

        {"accuracy": {selector: [{mean, low, high} per k]},
         "vs_random": {selector: [{mean, low, high} per k]},
         "questions_to_match": {selector: {"random_at": questions, "accuracy": ..., "needed": k,
                                           "ratio": questions / k}},
         "questions_to_95": {selector: k, "random": k}, "seconds": {selector: s}}

    `questions_to_95`: the fewest questions after which a selector has made 95 % of random's
    gain from no questions to `questions` (accuracy ≥ acc₀ + 0.95 (random's final − acc₀))."""
    episodes = sample_episodes(
        pairs, users, pool_size, pool_size, num_targets, seed, source="test split"
    )
    rows = episode_arrays(episodes)
    pool_rows, target_rows = rows["context"], rows["target"]
    prompts = pairs.prompt_id[target_rows.reshape(-1)]
    correct: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for selector in selectors:
        start = time.perf_counter()
        parts = [
            ask_and_score(
                model,
                pairs,
                pool_rows[i : i + chunk],
                target_rows[i : i + chunk],
                selector,
                questions,
                seed + i,
            )[0]
            for i in range(0, users, chunk)
        ]
        correct[selector] = np.concatenate(parts, axis=1).reshape(questions + 1, -1)
        seconds[selector] = time.perf_counter() - start
        log.info(
            "%s: accuracy after 0..%d questions %s (%.0f s)",
            selector,
            questions,
            np.round(correct[selector].mean(1), 1).tolist(),
            seconds[selector],
        )
    result: dict = {
        "users": users,
        "pool_size": pool_size,
        "targets": num_targets,
        "accuracy": {
            s: [mean_interval(c[k], prompts, seed) for k in range(questions + 1)]
            for s, c in correct.items()
        },
        "seconds": seconds,
    }
    if "random" not in correct:
        return result
    random = correct["random"]
    final = random[questions].mean()
    result["vs_random"] = {
        s: [mean_interval(c[k] - random[k], prompts, seed) for k in range(questions + 1)]
        for s, c in correct.items()
        if s != "random"
    }
    means = {s: c.mean(1) for s, c in correct.items()}
    result["questions_to_match"] = {
        s: _to_match(means[s], final, questions) for s in correct if s != "random"
    }
    start = random[0].mean()  # every selector's, at no questions
    level = start + 0.95 * (final - start)
    result["questions_to_95"] = {s: _first_k(means[s], level) for s in correct}
    result["random_gain"] = float(final - start)
    return result


def plot_questions(studies: dict[str, dict], path: str | Path) -> None:
    """Accuracy vs questions asked, one panel per task (`questions_study` results), each
    selector a line with its interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(studies), figsize=(5 * len(studies), 4), squeeze=False)
    for ax, (task, study) in zip(axes[0], studies.items(), strict=True):
        for selector, by_k in study["accuracy"].items():
            k = np.arange(len(by_k))
            ax.plot(k, [s["mean"] for s in by_k], marker="o", ms=3, label=selector)
            ax.fill_between(k, [s["low"] for s in by_k], [s["high"] for s in by_k], alpha=0.15)
        ax.set(title=task, xlabel="questions asked", ylabel="target accuracy (%)")
    save_plot(fig, axes[0], path)


def _first_k(accuracy: np.ndarray, level: float) -> int | None:
    """The fewest questions after which accuracy reaches `level` (None: never)."""
    reached = np.flatnonzero(accuracy >= level)
    return int(reached[0]) if len(reached) else None


def _to_match(accuracy: np.ndarray, final: float, questions: int) -> dict:
    needed = _first_k(accuracy, final)
    return {
        "random_at": questions,
        "accuracy": float(final),
        "needed": needed,
        "ratio": questions / needed if needed else None,  # None: never, or with no question
    }
