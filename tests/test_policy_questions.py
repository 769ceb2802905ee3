"""NP-DPO after chosen questions (`evaluation/policy_questions.py`): a policy whose encoder comes
from a variational NP-BTL must say so (`policy.latent`); only that NP-BTL may ask for it; questions
come from the user's pool, never a target nor (for generation) an answered prompt; moves are
signed toward each type's preference; the checks read the paired intervals."""

import numpy as np
import pytest
import torch

from npalign.config import (
    EmbedConfig,
    ModelConfig,
    PolicyConfig,
    PolicyJobConfig,
    SteerConfig,
    SteerType,
)
from npalign.data.preferences import PairTable
from npalign.data.sequences import tokenize_pairs
from npalign.data.steer import build_steer
from npalign.data.text import read_text_splits
from npalign.evaluation.generation import study_prompts
from npalign.evaluation.policy_questions import (
    accuracy_after_questions,
    generation_after_questions,
    questions_checks,
)
from npalign.models.policy import build_policy, load_policy, save_policy
from npalign.models.reward import build_reward_model, save_reward_model

LATENT, DIM = 4, 8
FOUR = [
    SteerType(name="concise", attribute="length", prefers="lower", margin=10),
    SteerType(name="detailed", attribute="length", prefers="higher", margin=10),
    SteerType(name="formal", attribute="formality", prefers="higher"),
    SteerType(name="casual", attribute="formality", prefers="lower"),
]


@pytest.fixture(scope="module")
def asked_setup(tmp_path_factory):
    """A variational NP-BTL, a policy whose encoder starts from it (perturbed LoRA and FiLM), and
    a four-type steer test split with random embeddings (they only feed z and the questions)."""
    folder = tmp_path_factory.mktemp("asked")
    model = ModelConfig(hidden_dim=16, latent_dim=LATENT, latent="variational")
    torch.manual_seed(0)
    reward = build_reward_model("npbtl", model, DIM).eval()
    save_reward_model(folder / "npbtl", "npbtl", model, DIM, reward.state_dict())
    config = PolicyConfig(
        num_layers=1,
        lora_rank=4,
        hidden_dim=16,
        latent_dim=LATENT,
        latent="variational",
        encoder_init=str(folder / "npbtl"),
    )
    policy, tokenizer = build_policy(config, feature_dim=DIM)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_" in name or name.startswith("film."):
                p.add_(torch.randn_like(p) * 0.5)
    state = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    save_policy(folder / "npdpo", config, EmbedConfig(), DIM, True, state)

    steer = SteerConfig(types=FOUR, stories=60, pairs_per_prompt=6, conflicting_only=False)
    text = read_text_splits(build_steer(steer))["test"]
    rng = np.random.default_rng(0)
    column = lambda name: np.asarray(text.column(name).to_pylist(), dtype=object)  # noqa: E731
    pairs = PairTable(
        pair_id=column("pair_id"),
        prompt_id=column("prompt_id"),
        features_a=rng.normal(size=(text.num_rows, DIM)).astype(np.float32),
        features_b=rng.normal(size=(text.num_rows, DIM)).astype(np.float32),
        user=column("user"),
        user_type=column("user_type"),
        choice=np.asarray(text.column("choice").to_pylist(), dtype=np.int8),
    )
    tokens = tokenize_pairs(text, tokenizer, 64, 32, "test split")
    job = PolicyJobConfig(data={"source": "steer", "steer": steer})
    return reward, load_policy(folder / "npdpo"), job, text, pairs, tokens, folder


def test_the_policy_must_name_its_encoders_latent_kind(asked_setup, tmp_path):
    reward, loaded, *_, folder = asked_setup
    deterministic = PolicyConfig(
        num_layers=1, hidden_dim=16, latent_dim=LATENT, encoder_init=str(folder / "npbtl")
    )
    with pytest.raises(ValueError, match="latent is variational; set policy.latent: variational"):
        build_policy(deterministic, feature_dim=DIM)
    assert loaded.policy.encoder.variational  # rebuilt so from the checkpoint alone
    for name, tensor in loaded.policy.encoder.state_dict().items():
        torch.testing.assert_close(tensor, reward.context_encoder.state_dict()[name])
    btl = ModelConfig(hidden_dim=16, latent_dim=LATENT)
    save_reward_model(
        tmp_path / "btl", "btl", btl, DIM, build_reward_model("btl", btl, DIM).state_dict()
    )
    with pytest.raises(ValueError, match="a BTL has no context encoder"):
        build_policy(PolicyConfig(num_layers=1, encoder_init=str(tmp_path / "btl")), DIM)


def test_questions_come_from_the_pools_never_a_target_or_an_answered_prompt(asked_setup):
    reward, policy, job, text, pairs, tokens, folder = asked_setup
    result = accuracy_after_questions(
        reward, policy, pairs, tokens, ["random", "bald"], [0, 1, 3], 8, 5, 2, seed=0
    )
    targets = np.asarray(result["target_rows"])
    for model in ("npdpo", "npbtl"):
        assert len(result[model]["accuracy"]["bald"]) == 3
        assert result[model]["vs_random"]["bald"][0] == {"mean": 0.0, "low": 0.0, "high": 0.0}
    for asked in result["asked"].values():
        for user, row in enumerate(asked):  # 3 distinct pairs, none a target (by content)
            assert len(set(pairs.pair_id[row])) == 3
            assert not set(pairs.pair_id[row]) & set(pairs.pair_id[targets[user]])
            assert set(pairs.user[row]) == {pairs.user[targets[user][0]]}
    with pytest.raises(ValueError, match="a pair would repeat"):
        accuracy_after_questions(reward, policy, pairs, tokens, ["random"], [6], 8, 5, 2, seed=0)
    with pytest.raises(ValueError, match="at least one of them above 0"):
        accuracy_after_questions(reward, policy, pairs, tokens, ["random"], [0], 8, 5, 2, seed=0)
    moved = load_policy(folder / "npdpo")
    with torch.no_grad():
        next(moved.policy.encoder.parameters()).add_(0.1)
    with pytest.raises(ValueError, match="not the NP-BTL's that asks"):
        accuracy_after_questions(reward, moved, pairs, tokens, ["random"], [1], 8, 5, 2, seed=0)

    torch.manual_seed(0)
    generated = generation_after_questions(
        reward, policy, job, text, pairs, ["random", "bald"], [0, 2], 2, 4, 4, seed=0
    )
    prompts = np.asarray(text.column("prompt").to_pylist(), dtype=object)
    answered = set(study_prompts(text, 2)[2])
    assert set(generated["by_type"]) == {t.name for t in FOUR}
    for name, result in generated["by_type"].items():
        for asked in result["asked"].values():
            for row in asked:  # one user per prompt: 2 questions, theirs, on other prompts
                assert len(set(row)) == 2 and set(pairs.user_type[row]) == {name}
                assert not set(prompts[row]) & answered
        # moves are signed toward the type's preference: concise users' shorter answers are +
        answers = result["answers"]["bald"]
        change = np.mean(answers[2]["values"]) - np.mean(answers[0]["values"])
        sign = -1 if name in ("concise", "casual") else 1
        assert result["move"]["bald"][2]["mean"] == pytest.approx(sign * change)
    with pytest.raises(ValueError, match="fewer than a pool of 10000"):
        generation_after_questions(
            reward, policy, job, text, pairs, ["random"], [0, 1], 2, 10000, 4, seed=0
        )


def _interval(mean, low, high):
    return {"mean": mean, "low": low, "high": high}


def test_the_checks_need_bald_never_behind_and_readable_moves_toward_each_preference():
    accuracy = {
        "ks": [0, 2],
        "npdpo": {"vs_random": {"bald": [_interval(0, 0, 0), _interval(5, 1, 9)]}},
    }
    answers = {"random": {0: {"degenerate": 0.0}}, "bald": {2: {"degenerate": 0.0}}}
    move = {"bald": {2: _interval(30, 20, 40)}}
    generation = {
        "ks": [0, 2],
        "by_type": {
            "concise": {"answers": answers, "move": move, "vs_random": move},
            "formal": {
                "answers": {**answers, "bald": {2: {"degenerate": 1 / 16}}},
                "move": move,
                "vs_random": move,
            },
            "casual": {
                "answers": answers,
                "move": {"bald": {2: _interval(0.5, -0.1, 1)}},
                "vs_random": move,
            },
        },
    }
    checks = questions_checks(accuracy, generation)
    assert checks["npdpo after bald questions >= random at every k"]["pass"]
    passed = {n.split()[0]: c["pass"] for n, c in checks.items() if "answers move" in n}
    assert passed == {"concise": True, "formal": False, "casual": False}
    accuracy["npdpo"]["vs_random"]["bald"][1] = _interval(-5, -9, -1)
    assert not questions_checks(accuracy, generation)[
        "npdpo after bald questions >= random at every k"
    ]["pass"]
