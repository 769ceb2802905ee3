import numpy as np
import pytest
import torch
from test_preferences import small_table

from npalign.data.episodes import collate, context_rows, episode_arrays, sample_episodes
from npalign.data.preferences import PreferenceDataError


def test_context_and_target_are_disjoint_and_from_one_user():
    pairs = small_table(rows=200)
    episodes = sample_episodes(pairs, 500, 0, 10, 20, seed=0)
    sizes = set()
    arrays = episode_arrays(episodes)
    for user, context, target in zip(
        arrays["user"], context_rows(episodes), arrays["target"], strict=True
    ):
        assert not set(context) & set(target)
        assert len(target) == 20 and 0 <= len(context) <= 10
        assert set(pairs.user[np.concatenate([context, target])]) == {user}
        sizes.add(len(context))
    # m is drawn per episode: every size in [0, 10] shows up
    assert sizes == set(range(11))


def test_paired_episodes_score_every_user_on_the_same_targets():
    pairs = small_table(rows=200)
    # every pair labelled by both users
    pairs.pair_id = np.array([f"p{i // 2}" for i in range(200)], dtype=object)
    episodes = sample_episodes(pairs, 51, 0, 10, 3, seed=0, paired=True)
    arrays = episode_arrays(episodes)
    contexts = context_rows(episodes)
    assert len(episodes) == 51
    sizes = np.array([len(c) for c in contexts[:50]]).reshape(25, 2)
    assert (sizes[:, 0] == sizes[:, 1]).all(), "one context size per group"
    assert len(set(sizes[:, 0])) > 3, "drawn afresh for each group"
    for start in range(0, 51, 2):
        group = range(start, min(start + 2, 51))
        assert [arrays["user"][i] for i in group] == ["u0", "u1"][: len(group)]
        targets = {tuple(pairs.pair_id[arrays["target"][i]]) for i in group}
        assert len(targets) == 1, "one group, one set of target pairs"
        for i in group:
            rows = np.concatenate([contexts[i], arrays["target"][i]])
            assert set(pairs.user[rows]) == {arrays["user"][i]}, "each user's own labels"
            assert not set(pairs.pair_id[contexts[i]]) & set(pairs.pair_id[arrays["target"][i]])
    # unlabelled by the other user: a clear error, not a silent unpaired draw
    with pytest.raises(PreferenceDataError, match=r"only 0 pairs are labelled by all 2 users"):
        sample_episodes(small_table(rows=200), 10, 0, 5, 3, seed=0, paired=True)


def test_empty_context_share_empties_whole_groups():
    pairs = small_table(rows=200)
    pairs.pair_id = np.array([f"p{i // 2}" for i in range(200)], dtype=object)
    sizes = [len(c) for c in context_rows(sample_episodes(pairs, 400, 1, 10, 3, 0, paired=True))]
    assert min(sizes) == 1, "min_context 1 alone gives no empty context"
    episodes = sample_episodes(pairs, 400, 1, 10, 3, seed=0, paired=True, empty_context_share=0.5)
    sizes = np.array([len(c) for c in context_rows(episodes)]).reshape(200, 2)
    empty = sizes == 0
    assert (empty[:, 0] == empty[:, 1]).all(), "both users of a group, or neither"
    assert 0.4 < empty[:, 0].mean() < 0.6
    assert (sizes[~empty] >= 1).all()


def test_context_larger_than_a_users_pairs_is_a_clear_error():
    pairs = small_table(rows=20)  # 10 pairs per user
    with pytest.raises(PreferenceDataError, match=r"user 'u0' has 10 pairs.*max_context \(5\)"):
        sample_episodes(pairs, 10, 0, 5, 8, seed=0, source="train split")


def test_collate_pads_and_orders_chosen_first():
    pairs = small_table(rows=10, dim=3)
    rows = {"context": np.array([[0, 1], [-1, -1]]), "target": np.array([[2, 3, 4], [5, -1, -1]])}
    batch = collate(rows, pairs)
    assert batch.context_chosen.shape == (2, 2, 3)
    assert batch.context_mask.tolist() == [[True, True], [False, False]]
    assert batch.target_mask.tolist() == [[True, True, True], [True, False, False]]
    # row 0 chose a, row 1 chose b
    torch.testing.assert_close(batch.context_chosen[0, 0], torch.from_numpy(pairs.features_a[0]))
    torch.testing.assert_close(batch.context_chosen[0, 1], torch.from_numpy(pairs.features_b[1]))
    torch.testing.assert_close(batch.context_rejected[0, 1], torch.from_numpy(pairs.features_a[1]))
    assert batch.target_choice[0].tolist() == [0.0, 1.0, 0.0]


def test_evaluation_scores_the_same_users_and_targets_at_every_context_size():
    from npalign.evaluation.accuracy import evaluation_episodes

    pairs = small_table(rows=200)
    by_m = evaluation_episodes(pairs, [0, 1, 3, 10], 50, 5, seed=1)
    largest = context_rows(by_m[10])
    for m, episodes in by_m.items():
        arrays = episode_arrays(episodes)
        assert arrays["user"].tolist() == episode_arrays(by_m[0])["user"].tolist()
        assert np.array_equal(arrays["target"], episode_arrays(by_m[0])["target"])
        for context, full, target in zip(
            context_rows(episodes), largest, arrays["target"], strict=True
        ):
            # the first m of the largest context, never a target
            assert context.tolist() == full[:m].tolist()
            assert not set(context) & set(target)
