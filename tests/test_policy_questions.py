"""NP-DPO after chosen questions (`evaluation/policy_questions.py`): a policy whose encoder comes
from a variational NP-BTL must say so (`policy.latent`); that NP-BTL asks, the policy reads the
answers; k = 0 is one shared measurement; generation pools never hold an answered prompt."""

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


def test_the_policy_must_name_its_encoders_latent_kind(asked_setup):
    reward, loaded, *_, folder = asked_setup
    deterministic = PolicyConfig(
        num_layers=1, hidden_dim=16, latent_dim=LATENT, encoder_init=str(folder / "npbtl")
    )
    with pytest.raises(ValueError, match="latent is variational; set policy.latent: variational"):
        build_policy(deterministic, feature_dim=DIM)
    assert loaded.policy.encoder.variational  # rebuilt so from the checkpoint alone
    for name, tensor in loaded.policy.encoder.state_dict().items():
        torch.testing.assert_close(tensor, reward.context_encoder.state_dict()[name])


def test_asked_users_share_k0_and_the_policy_reads_what_the_npbtl_asked(asked_setup):
    reward, policy, job, text, pairs, tokens, _ = asked_setup
    result = accuracy_after_questions(
        reward, policy, pairs, tokens, ["random", "bald"], [0, 1, 3], 8, 5, 2, seed=0
    )
    for model in ("npdpo", "npbtl"):
        assert len(result[model]["accuracy"]["bald"]) == 3
        assert result[model]["vs_random"]["bald"][0] == {"mean": 0.0, "low": 0.0, "high": 0.0}
    with pytest.raises(ValueError, match="a pair would repeat"):
        accuracy_after_questions(reward, policy, pairs, tokens, ["random"], [6], 8, 5, 2, seed=0)

    torch.manual_seed(0)
    generated = generation_after_questions(
        reward, policy, job, text, pairs, ["random", "bald"], [0, 2], 2, 4, 4, seed=0
    )
    prompts = np.asarray(text.column("prompt").to_pylist(), dtype=object)
    answered = set(study_prompts(text, 2)[2])
    assert set(generated["by_type"]) == {t.name for t in FOUR}
    for name, result in generated["by_type"].items():
        zero = [result["answers"][s][0]["texts"] for s in ("random", "bald")]
        assert zero[0] == zero[1] and len(zero[0]) == 2
        assert result["move"]["bald"][0]["mean"] == 0
        for asked in result["asked"].values():
            for row in asked:  # one user per prompt: 2 questions, theirs, on other prompts
                assert len(set(row)) == 2 and set(pairs.user_type[row]) == {name}
                assert not set(prompts[row]) & answered
    with pytest.raises(ValueError, match="fewer than a pool of 10000"):
        generation_after_questions(
            reward, policy, job, text, pairs, ["random"], [0], 2, 10000, 4, seed=0
        )
