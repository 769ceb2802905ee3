"""Confidence intervals by the independent unit: a bootstrap over prompts.

Test episodes reuse a split's few prompts (the steer task's test split has ~30), and in the
paper's setting users are types, so targets of one prompt are not independent draws: an SEM over
episodes is too narrow. Here a resample draws the prompts with replacement and keeps every target
of each drawn prompt, as many times as it was drawn; a type's accuracy in a resample is the mean
over its kept targets. Every type and every compared quantity (two context sizes, two models,
two generations for the same prompt) shares one draw of prompts per resample, so differences
are paired.
"""

from __future__ import annotations

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


def mean_sem(values) -> dict[str, float]:
    """Mean, its standard error (NaN for one value) and the count of a 1-d sample: a
    description of the sample, not an interval for the independent unit."""
    values = np.asarray(values, dtype=float)
    sem = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
    return {"mean": float(values.mean()), "sem": float(sem), "n": len(values)}


def prompt_draws(prompts: np.ndarray, resamples: int = RESAMPLES, seed: int = 0):
    """(index of each row's prompt (rows,), how often each prompt is drawn (resamples, prompts))."""
    unique, index = np.unique(np.asarray(prompts, dtype=str), return_inverse=True)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(unique), np.full(len(unique), 1 / len(unique)), size=resamples)
    return index, counts


def resampled_means(values: np.ndarray, index: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mean of `values` (rows,) in each resample of `prompt_draws`: (resamples,), NaN where the
    resample drew none of these rows' prompts."""
    prompts = counts.shape[1]
    sums = np.bincount(index, weights=values, minlength=prompts)  # (prompts,)
    sizes = np.bincount(index, minlength=prompts).astype(float)
    drawn = counts @ sizes
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(drawn > 0, (counts @ sums) / drawn, np.nan)


def interval(estimate: float, resampled: np.ndarray, level: float = LEVEL) -> dict[str, float]:
    """The estimate and the percentile interval of its resampled values."""
    tail = 100 * (1 - level) / 2
    low, high = np.nanpercentile(resampled, [tail, 100 - tail])
    return {"mean": float(estimate), "low": float(low), "high": float(high)}


def type_means(
    values: np.ndarray, types: np.ndarray, prompts: np.ndarray, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Per type, its mean of `values` (rows,) with a prompt-bootstrap interval, plus "sum" (the
    types' means added: A + B for two types) and "average" (their mean), from the same draws."""
    values, types = np.asarray(values, dtype=float), np.asarray(types)
    index, counts = prompt_draws(prompts, seed=seed)
    out, resampled = {}, []
    for user_type in sorted(set(types.tolist())):
        rows = types == user_type
        draws = resampled_means(values[rows], index[rows], counts)
        out[user_type] = interval(values[rows].mean(), draws)
        resampled.append(draws)
    total = np.sum(resampled, axis=0)
    estimate = sum(s["mean"] for s in out.values())
    out["sum"] = interval(estimate, total)
    out["average"] = interval(estimate / len(resampled), total / len(resampled))
    return out


def mean_interval(values: np.ndarray, prompts: np.ndarray, seed: int = 0) -> dict[str, float]:
    """The mean of `values` (rows,) with a prompt-bootstrap interval; for paired differences,
    pass the per-row differences."""
    values = np.asarray(values, dtype=float)
    if not len(values):
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan")}
    index, counts = prompt_draws(prompts, seed=seed)
    return interval(values.mean(), resampled_means(values, index, counts))
