import numpy as np
import pytest

from npalign.config import SyntheticConfig
from npalign.data.episodes import sample_episodes
from npalign.data.synthetic import bayes_accuracy, make_synthetic


@pytest.fixture(scope="module")
def splits():
    return make_synthetic(SyntheticConfig(num_pairs=4000, seed=3))


def test_splits_are_by_pair(splits):
    ids = {split: set(pairs.pair_id) for split, pairs in splits.items()}
    assert not ids["train"] & ids["val"]
    assert not ids["train"] & ids["test"]
    assert not ids["val"] & ids["test"]
    assert sum(len(x) for x in ids.values()) == 4000


def test_types_follow_the_paper(splits):
    train = splits["train"]
    y_a, y_b = train.features_a[:, 0], train.features_b[:, 0]
    t0 = train.user_type == "type0"
    # type 0 prefers the larger option; type 1 the one nearer 0.5
    np.testing.assert_array_equal(train.choice[t0], (y_b[t0] > y_a[t0]).astype(np.int8))
    t1 = ~t0
    near_b = np.abs(y_b[t1] - 0.5) < np.abs(y_a[t1] - 0.5)
    np.testing.assert_array_equal(train.choice[t1], near_b.astype(np.int8))
    disagree = train.choice[t0] != train.choice[t1]
    assert 0.45 < disagree.mean() < 0.55


@pytest.mark.parametrize("m", [0, 1, 3])
def test_bayes_accuracy_matches_the_closed_form(splits, m):
    test = splits["test"]
    episodes = sample_episodes(test, 3000, m, m, 20, seed=m)
    accuracy = bayes_accuracy(test, episodes)
    # 100 − 25·0.5^m with the split's own share d of pairs the types disagree on (d ≈ 1/2): a
    # target is a coin flip when it is a disagreement and no context pair revealed the type.
    t0 = test.user_type == "type0"
    d = (test.choice[t0] != test.choice[~t0]).mean()
    expected = 100 - 50 * d * (1 - d) ** m
    sem = accuracy.std() / np.sqrt(len(accuracy))
    assert abs(accuracy.mean() - expected) < 4 * sem + 0.2
