"""The prompt bootstrap (`evaluation/statistics.py`): intervals that widen when targets share
prompts, paired differences that cancel what the two sides share, and the types' sum."""

import numpy as np
import pytest

from npalign.evaluation.statistics import mean_interval, type_means


def test_targets_of_few_prompts_get_a_wider_interval_than_as_many_independent_ones():
    rng = np.random.default_rng(0)
    # 8 prompts, 50 targets each, right on an easy prompt and wrong on a hard one: the number
    # of prompts, not of targets, sets the uncertainty.
    prompt_means = rng.uniform(0, 100, size=8)
    clustered = np.repeat(prompt_means, 50)
    few = mean_interval(clustered, np.repeat(np.arange(8), 50))
    many = mean_interval(clustered, np.arange(400))
    assert few["low"] <= few["mean"] <= few["high"]
    assert few["high"] - few["low"] > 3 * (many["high"] - many["low"])


def test_a_constant_paired_difference_has_no_spread():
    prompts = np.repeat(np.arange(10), 3)
    before = np.random.default_rng(1).uniform(0, 100, size=30)
    after = before + 10
    paired = mean_interval(after - before, prompts)
    assert paired == pytest.approx({"mean": 10, "low": 10, "high": 10})
    assert mean_interval(after, prompts)["high"] - mean_interval(after, prompts)["low"] > 5


def test_type_means_add_up_per_resample():
    prompts = np.tile(np.arange(20), 2)
    types = np.array(["a"] * 20 + ["b"] * 20)
    values = np.where(types == "a", 100.0, 0.0)
    values[np.arange(0, 40, 4)] = 50.0
    out = type_means(values, types, prompts)
    assert out["sum"]["mean"] == pytest.approx(out["a"]["mean"] + out["b"]["mean"])
    assert out["average"]["mean"] == pytest.approx(out["sum"]["mean"] / 2)
    for key in ("a", "b", "sum", "average"):
        assert out[key]["low"] <= out[key]["mean"] <= out[key]["high"]


def test_no_values_give_an_interval_of_nans():
    out = mean_interval(np.array([]), np.array([]))
    assert all(np.isnan(v) for v in out.values())
