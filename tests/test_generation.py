"""The generated-attribute study and its checks (`evaluation/generation.py`): hand-made texts for
the degenerate check, hand-made studies for the checks, and one small study on a one-block
SmolLM2, where FiLM's identity at an empty context makes NP-DPO's m = 0 answers the same
network's answers without z."""

import numpy as np
import PIL.Image
import pytest
import torch
from test_policy import LATENT, perturb

from npalign.config import PolicyJobConfig
from npalign.evaluation.generation import (
    accuracy_checks,
    degenerate,
    generation_checks,
    generation_study,
    plot_generation,
)


@pytest.mark.parametrize(
    "text",
    [
        "the details of the details of the details of the details of it",
        "Supercalifragilisticexpialidociousnessly so.",
        "yes yes yes yes yes yes yes no",
        "The fire spread fast overnight. Crews arrived. The fire spread fast overnight.",
        "The company had a cash runway impairment impairment impairment of 2.2 %.",
        "It was released on November 17, 22, 23, 24, 25, 26, 27, 30, 31 and later.",
        "On the 21st, 22nd, 23rd, 24th, 25th, 26th, 27th, 28th and 29th of May.",
    ],
)
def test_loops_glued_tokens_and_repeated_sentences_are_degenerate(text):
    assert degenerate(text)


def test_ordinary_answers_are_not_degenerate():
    assert not degenerate("A fire broke out in the hills. Crews contained it by the evening.")
    assert not degenerate("Rain.")
    assert not degenerate("They had had enough: 3, 4 or 5 of 1,200 homes, on 12 May 2024.")
    assert not degenerate("At 00:00:00 it cost $1,000,000,000. No, no, no, said the bank.")
    assert not degenerate("Scores 3-6, 6-3, 7-6, 4-6, 6-4, 6-2, 6-1, 7-5 and $1,234,567.89.")
    assert not degenerate("Winners in 1990, 1994, 1998, 2002, 2006, 2010, 2014, 2018, 2022.")


def interval(mean, low, high):
    return {"mean": mean, "low": low, "high": high}


def test_accuracy_checks_read_the_bootstrap_intervals():
    change_a = {
        "0->5": interval(10, 2, 18),
        "5->10": interval(-1, -6, 4),
        "0->10": interval(9, 1, 17),
    }
    change_b = {
        "0->5": interval(5, -2, 12),
        "5->10": interval(-8, -12, -3),
        "0->10": interval(-3, -9, 2),
    }
    results = {
        "npdpo": {
            "average": {10: {"mean": 65, "ci": [60, 69.5], "sum": interval(130, 120, 139)}},
            "by_type": {"a": {}, "b": {}},
            "change": {step: {"a": change_a[step], "b": change_b[step]} for step in change_a},
        }
    }
    checks = accuracy_checks(results, [0, 5, 10])
    average = checks["npdpo mean over types at m=10 >= 70"]
    assert average["ci"] == [60, 69.5] and not average["pass"]
    # Three types at 65 % each: their sum is over 140, their mean is what the check reads.
    results["npdpo"]["average"][10] = {"mean": 65, "ci": [60, 70], "sum": interval(195, 180, 210)}
    assert not accuracy_checks(results, [0, 5, 10])["npdpo mean over types at m=10 >= 70"]["pass"]
    assert checks["npdpo [a] rises from m=0 to m=10"]["pass"]
    assert not checks["npdpo [b] rises from m=0 to m=10"]["pass"]
    assert checks["npdpo [a] falls at no step in m"]["pass"]
    fall = checks["npdpo [b] falls at no step in m"]
    assert not fall["pass"] and fall["worst_step"] == "5->10"


def test_generation_checks_need_a_paired_move_toward_the_preference_and_readable_text():
    job = PolicyJobConfig(eval={"context_sizes": [0, 10]})
    texts = ["A short plain answer."] * 4

    def at(values, texts=texts):
        return {
            "values": values,
            "texts": texts,
            "degenerate": np.mean(list(map(degenerate, texts))),
        }

    looping = ["the details of the details of the details of the details"] * 4
    study = {
        "npdpo": {
            "concise": {0: at([40, 42, 38, 40]), 10: at([20, 25, 22, 21])},
            "detailed": {0: at([40, 42, 38, 40]), 10: at([41, 40, 39, 42], looping)},
        },
        "dpo": {"length": {"values": [40, 41, 39, 40]}},
    }
    checks = generation_checks(study, job)
    assert checks["generated length [concise] m=10 vs m=0"]["pass"]
    assert checks["generated length [concise] m=10 vs pooled dpo"]["pass"]
    assert checks["generated text [concise] not degenerate at any m"]["pass"]
    assert not checks["generated length [detailed] m=10 vs pooled dpo"]["pass"]
    assert not checks["generated text [detailed] not degenerate at any m"]["pass"]


def test_study_answers_every_type_at_every_m_and_m0_is_the_policy_without_z(tmp_path):
    from npalign.config import EmbedConfig, PolicyConfig, SteerConfig
    from npalign.data.preferences import PairTable
    from npalign.data.steer import build_steer
    from npalign.data.text import read_text_splits
    from npalign.models.policy import build_policy, save_policy

    config = PolicyConfig(num_layers=1, lora_rank=4, hidden_dim=16, latent_dim=LATENT)
    policy, _ = build_policy(config, feature_dim=8)
    perturb(policy)
    state = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    lora = {n: p for n, p in state.items() if "lora_" in n}
    checkpoints = {"npdpo": tmp_path / "npdpo", "dpo": tmp_path / "dpo"}
    save_policy(checkpoints["npdpo"], config, EmbedConfig(), 8, True, state)
    # The pooled policy: the same LoRA, no encoder or FiLM.
    save_policy(checkpoints["dpo"], config, EmbedConfig(), 8, False, lora)

    # A three-type mix over both attributes.
    formal = {"name": "formal", "attribute": "formality", "prefers": "higher"}
    types = [*SteerConfig().types, formal]
    steer = SteerConfig(types=types, stories=30, pairs_per_prompt=6)
    text = read_text_splits(build_steer(steer))["test"]
    rng = np.random.default_rng(0)
    rows = text.num_rows
    pairs = PairTable(  # the embeddings only feed z: random ones do
        pair_id=np.asarray(text.column("pair_id").to_pylist(), dtype=object),
        prompt_id=np.asarray(text.column("prompt_id").to_pylist(), dtype=object),
        features_a=rng.normal(size=(rows, 8)).astype(np.float32),
        features_b=rng.normal(size=(rows, 8)).astype(np.float32),
        user=np.asarray(text.column("user").to_pylist(), dtype=object),
        user_type=np.asarray(text.column("user_type").to_pylist(), dtype=object),
        choice=np.asarray(text.column("choice").to_pylist(), dtype=np.int8),
    )
    job = PolicyJobConfig(data={"source": "steer", "steer": steer}, eval={"context_sizes": [0, 2]})
    torch.manual_seed(0)
    study = generation_study(job, checkpoints, text, pairs, num_prompts=2, tokens=6)

    assert set(study["npdpo"]) == {"concise", "detailed", "formal"}
    for per_m in study["npdpo"].values():
        assert set(per_m) == {0, 2}
        for result in per_m.values():
            assert len(result["texts"]) == len(result["values"]) == 2
            assert 0 <= result["degenerate"] <= 1
        # z = 0 with no context: FiLM is the identity, so NP-DPO answers as the pooled policy
        # with the same LoRA does.
        assert per_m[0]["texts"] == study["npdpo"]["concise"][0]["texts"]
    assert study["dpo"]["length"]["values"] == study["npdpo"]["concise"][0]["values"]
    assert study["dpo"]["formality"]["values"] == study["npdpo"]["formal"][0]["values"]
    plot_generation(study, job, tmp_path / "generated.png")
    width, height = PIL.Image.open(tmp_path / "generated.png").size
    assert (width, height) == (2 * 6 * 120, 4 * 120)  # a panel per attribute
