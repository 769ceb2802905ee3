"""Choosing questions (`active.py`): every selector picks, first, the one pair of the pool on which
two user types disagree; nothing masked out (asked already, or a target) is ever returned; the
NP-BTL's batched rewards over latent samples equal its plain rewards; the study
(`evaluation/questions.py`) asks each pool pair at most once and never a target."""

import numpy as np
import pytest
import torch
from torch import nn

from npalign.active import Pool, _joint_information, next_questions, question_scores
from npalign.config import ModelConfig
from npalign.models.context import Latent
from npalign.models.reward import NPBTL
from npalign.registry import QUESTION_SELECTORS

DIM = 3
# Two types; on features (x, y, s) type 1 rewards x + s, type 2 rewards y + s.
W = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]) * 4


class TwoTypes(nn.Module):
    """An exact two-type posterior in NP-BTL's interface: z is the log-odds of type 1 given the
    context (its spread: one unit), the reward mixes the types' rewards by sigmoid(z)."""

    uses_context = True
    variational = True

    def latent(self, chosen, rejected, mask) -> Latent:
        margins = (chosen - rejected) @ W.T  # (users, m, 2)
        log_lik = torch.nn.functional.logsigmoid(margins) * mask[..., None]
        log_odds = (log_lik[..., 0] - log_lik[..., 1]).sum(1, keepdim=True)  # (users, 1)
        return Latent(log_odds, torch.ones_like(log_odds))

    def reward(self, features, z):
        return self.reward_samples(features, z[:, None])[:, 0]

    def reward_samples(self, features, z):
        weight = torch.sigmoid(z)[..., None]  # (users, samples, 1, 1)
        rewards = features @ W.T  # (users, n, 2)
        return (
            weight[..., 0] * rewards[:, None, :, 0] + (1 - weight[..., 0]) * rewards[:, None, :, 1]
        )


def pool_with_one_disputed_pair(position: int, candidates: int = 8) -> Pool:
    """Pairs that differ in s (both types agree) except one, which trades x against y."""
    rng = np.random.default_rng(position)
    a = torch.zeros(1, candidates, DIM)
    b = torch.zeros(1, candidates, DIM)
    a[0, :, 2] = torch.from_numpy(rng.uniform(0, 0.3, candidates)).float()
    b[0, :, 2] = a[0, :, 2] + 0.5
    a[0, position] = torch.tensor([1.0, 0.0, 0.0])
    b[0, position] = torch.tensor([0.0, 1.0, 0.0])
    empty = torch.zeros(1, 1, DIM)
    return Pool(
        empty,
        empty,
        torch.zeros(1, 1, dtype=torch.bool),
        a,
        b,
        torch.ones(1, candidates, dtype=torch.bool),
    )


@pytest.mark.parametrize("selector", ["epig", "bald", "lookahead", "entropy"])
@pytest.mark.parametrize("position,candidates", [(0, 8), (5, 8), (77, 100)])
def test_the_one_pair_that_tells_the_types_apart_is_asked_first(selector, position, candidates):
    # With 100 candidates epig and lookahead probe 64: the disputed pair wins whether drawn or not.
    pool = pool_with_one_disputed_pair(position, candidates)
    index, score = next_questions(TwoTypes(), pool, selector)
    assert index.tolist() == [position] and score.item() > 0


@pytest.mark.parametrize("selector", ["epig", "bald", "lookahead", "entropy", "random"])
def test_a_masked_candidate_is_never_returned(selector):
    pool = pool_with_one_disputed_pair(3)
    pool.available[0, 3] = False  # asked already
    for seed in range(50):
        index, _ = next_questions(TwoTypes(), pool, selector, torch.Generator().manual_seed(seed))
        assert index.item() not in (3, -1)
    pool.available[:] = False
    index, score = next_questions(TwoTypes(), pool, selector)
    assert index.tolist() == [-1] and score.item() == float("-inf")


def test_npbtl_rewards_over_latent_samples_equal_its_plain_rewards():
    torch.manual_seed(0)
    model = NPBTL(DIM, ModelConfig(hidden_dim=16, latent_dim=4, latent="variational")).eval()
    features, z = torch.randn(2, 5, DIM), torch.randn(2, 3, 4)
    batched = model.reward_samples(features, z)
    for s in range(3):
        torch.testing.assert_close(batched[:, s], model.reward(features, z[:, s]))


@pytest.mark.parametrize("latent", ["variational", "deterministic"])
def test_every_selector_runs_on_an_npbtl_batched_over_users(latent):
    model = NPBTL(DIM, ModelConfig(hidden_dim=16, latent_dim=4, latent=latent))
    users, m, candidates = 3, 2, 7
    pool = Pool(
        torch.randn(users, m, DIM),
        torch.randn(users, m, DIM),
        torch.tensor([[True, True], [True, False], [False, False]]),
        torch.randn(users, candidates, DIM),
        torch.randn(users, candidates, DIM),
        torch.ones(users, candidates, dtype=torch.bool),
    )
    for selector in QUESTION_SELECTORS:
        if selector in ("epig", "bald") and latent == "deterministic":
            with pytest.raises(ValueError, match="variational"):
                question_scores(model, pool, selector)
            continue
        scores = question_scores(model, pool, selector)
        assert scores.shape == (users, candidates) and torch.isfinite(scores).all()
        if selector in ("lookahead", "entropy"):  # no sampling: each user alone scores the same
            for u in range(users):
                alone = Pool(*(getattr(pool, f)[u : u + 1] for f in pool.__dataclass_fields__))
                torch.testing.assert_close(question_scores(model, alone, selector)[0], scores[u])


def test_the_study_asks_each_pool_pair_once_and_never_a_target(tmp_path):
    from npalign.config import SyntheticConfig
    from npalign.data.episodes import episode_arrays, sample_episodes
    from npalign.data.synthetic import make_synthetic
    from npalign.evaluation.questions import ask_and_score, plot_questions, questions_study

    test = make_synthetic(SyntheticConfig(num_pairs=300))["test"]
    model = NPBTL(1, ModelConfig(hidden_dim=16, latent_dim=4, latent="variational"))
    rows = episode_arrays(sample_episodes(test, 6, 8, 8, 5, seed=0))
    for selector in QUESTION_SELECTORS:
        correct, asked = ask_and_score(model, test, rows["context"], rows["target"], selector, 8, 0)
        assert correct.shape == (9, 6, 5)
        for user in range(6):
            assert sorted(asked[user]) == sorted(rows["context"][user])  # all 8, each once
            targets = set(test.pair_id[rows["target"][user]])
            assert not targets & set(test.pair_id[asked[user]])
    study = questions_study(model, test, ["random", "bald"], 6, 8, 5, 3, seed=0)
    assert len(study["accuracy"]["bald"]) == 4 and study["vs_random"]["bald"][0]["mean"] == 0
    plot_questions({"toy": study, "again": study}, tmp_path / "questions.png")
    with pytest.raises(ValueError, match="a pair would repeat"):
        questions_study(model, test, ["random"], 6, 8, 5, 9, seed=0)
    assert (tmp_path / "questions.png").stat().st_size > 0


def test_a_question_pool_file_is_read_and_a_bad_row_named(tmp_path):
    import json

    from npalign.data.preferences import PreferenceDataError
    from npalign.serving import read_question_pool

    rows = [{"prompt": "Q?", "response_a": "Yes.", "response_b": "No, not today."}] * 2
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [c.response_b for c in read_question_pool(str(path), 100)] == ["No, not today."] * 2
    with pytest.raises(PreferenceDataError, match=r"pool.jsonl: row 0: a text over 10"):
        read_question_pool(str(path), 10)
    rows[1] = {**rows[1], "response_a": ""}
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(PreferenceDataError, match=r"pool.jsonl: row 1"):
        read_question_pool(str(path), 100)


def test_next_question_skips_pairs_in_the_context_in_either_order():
    from npalign.inference import ContextEmbeddings, next_question

    pool = pool_with_one_disputed_pair(2)
    a, b = pool.candidate_a[0].numpy(), pool.candidate_b[0].numpy()
    empty = ContextEmbeddings(np.zeros((0, DIM), np.float32), np.zeros((0, DIM), np.float32))
    index, information, selector = next_question(TwoTypes(), empty, a, b)
    assert (index, selector) == (2, "bald") and information > 0
    answered = ContextEmbeddings(b[2:3], a[2:3])  # the user chose b: stored (b, a)
    index, _, _ = next_question(TwoTypes(), answered, a, b)
    assert index not in (2, None)
    everything = ContextEmbeddings(np.concatenate([a, b[:1]]), np.concatenate([b, a[:1]]))
    assert next_question(TwoTypes(), everything, a, b)[0] is None
    # Answered long ago (no longer among the latest the model reads): still never asked again.
    assert next_question(TwoTypes(), empty, a, b, answered=everything)[0] is None


def test_the_joint_information_of_two_answers_by_hand():
    half = torch.tensor(0.5)
    # the same answer twice (p(both b) = p(b)): log 2; independent answers: 0
    assert torch.isclose(_joint_information(half, half, half), torch.log(torch.tensor(2.0)))
    assert torch.isclose(_joint_information(half * half, half, half), torch.tensor(0.0), atol=1e-6)
    # p(b) = 0.5 and 0.2, p(both b) = 0.15: the four cells by hand
    joint = torch.tensor([0.15, 0.35, 0.05, 0.45])
    product = torch.tensor([0.5 * 0.2, 0.5 * 0.8, 0.5 * 0.2, 0.5 * 0.8])
    expected = (joint * (joint / product).log()).sum()
    got = _joint_information(torch.tensor(0.15), half, torch.tensor(0.2))
    assert torch.isclose(got, expected)
