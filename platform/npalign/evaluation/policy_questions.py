"""NP-DPO after chosen questions: what the policy does for a new user who has answered k
questions chosen by its encoder's NP-BTL, against k random ones.

NP-DPO's context encoder is an NP-BTL's, kept as it is (`policy.encoder_init`); with a variational
latent (`policy.latent`) that NP-BTL asks by BALD, and the policy reads the answers as the user's
context. On the simulated users of one split, for each selector:

- implicit-reward accuracy (`evaluation/policy.py`) on each user's scored targets after the first
  k questions asked from their pool (pairs they labelled, none of them a target), with the
  NP-BTL's own accuracy on the same targets beside it;
- the generated attribute: for each steer type and each of `num_prompts` prompts of the split, a
  user of that type whose pool lies on the split's other prompts answers k questions; the
  policy's greedy answer (decoded as `job.policy.decoding` says: the checkpoint's, unless
  overridden) is scored with the type's attribute scorer and checked for degenerate text.

Every selector asks the same users from the same pools, and NP-DPO at k = 0 (no context) is
scored once for all. Differences from random are paired by user, with intervals from a
bootstrap over prompts (the targets', or the generated answers'), and signed so that positive
is toward the type's preference. The generation study's users draw their pools from the same
type's pairs on the other prompts, so their pools overlap; the bootstrap holds them fixed.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from npalign.config import PolicyJobConfig
from npalign.data.episodes import (
    PADDING,
    episode_arrays,
    index_column,
    sample_episodes,
)
from npalign.data.preferences import PairTable
from npalign.data.sequences import TokenizedPairs
from npalign.data.steer import SCORERS
from npalign.evaluation.generation import context_of, degenerate, study_prompts
from npalign.evaluation.policy import implicit_reward_accuracy
from npalign.evaluation.questions import ask, score_asked
from npalign.evaluation.statistics import mean_interval, mean_sem
from npalign.inference import generate, user_latents
from npalign.models.policy import PolicyCheckpoint

log = logging.getLogger(__name__)


def _check_study(reward: nn.Module, policy: PolicyCheckpoint, ks: list[int]) -> None:
    """Refuse a study whose answers the policy would not read as the NP-BTL that asked: a
    context-blind policy, or z's encoder trained away from that NP-BTL's (policy.encoder_lr)."""
    if not ks or min(ks) < 0 or max(ks) < 1:
        raise ValueError(f"k = {ks}: numbers of questions, at least one of them above 0")
    if not policy.use_latent:
        raise ValueError("the policy does not read a context (pooled DPO): no question can move it")
    kept = reward.context_encoder.state_dict()
    trained = policy.policy.encoder.state_dict()
    # Within bfloat16's rounding (a policy loaded on a GPU); a trained encoder moves further.
    close = (
        torch.allclose(kept[n].float(), t.float().cpu(), 1e-2, 1e-3) for n, t in trained.items()
    )
    if not all(close):
        raise ValueError(
            "the policy's context encoder is not the NP-BTL's that asks (trained with "
            "policy.encoder_lr above 0?): its questions would be chosen for another latent"
        )


def _first_k(asked: np.ndarray, k: int, target_rows: np.ndarray) -> pa.Table:
    """Episodes whose context is each user's first k asked pairs."""
    context = asked.copy()
    context[:, k:] = PADDING
    return pa.table({"context": index_column(context), "target": index_column(target_rows)})


def _summaries(correct: dict[str, np.ndarray], prompts: np.ndarray, seed: int) -> dict:
    """{"accuracy": {selector: [interval per k]}, "vs_random": {selector: [paired interval per
    k]}} from (ks, users, targets) 100/0 arrays."""
    flat = {s: c.reshape(len(c), -1) for s, c in correct.items()}
    out: dict = {
        "accuracy": {s: [mean_interval(row, prompts, seed) for row in c] for s, c in flat.items()}
    }
    if "random" in flat:
        out["vs_random"] = {
            s: [mean_interval(row, prompts, seed) for row in c - flat["random"]]
            for s, c in flat.items()
            if s != "random"
        }
    return out


def accuracy_after_questions(
    reward: nn.Module,
    policy: PolicyCheckpoint,
    pairs: PairTable,
    tokens: TokenizedPairs,
    selectors: list[str],
    ks: list[int],
    users: int,
    pool_size: int,
    num_targets: int,
    seed: int,
) -> dict:
    """NP-DPO's implicit-reward accuracy and the NP-BTL's accuracy on the same users' targets
    after k of their questions, for k in `ks`:

        {"ks", "target_rows", "asked": {selector: rows per user},
         "npdpo": {"accuracy", "vs_random", "by_type"}, "npbtl": {...}}"""
    _check_study(reward, policy, ks)
    rows = episode_arrays(
        sample_episodes(pairs, users, pool_size, pool_size, num_targets, seed, source="split")
    )
    pool_rows, target_rows = rows["context"], rows["target"]
    prompts = pairs.prompt_id[target_rows.reshape(-1)]
    user_types = pairs.user_type[target_rows[:, 0]]
    references: dict = {}  # π_ref's log-probs by target row, the same for every k and selector
    npdpo: dict[str, np.ndarray] = {}
    npbtl: dict[str, np.ndarray] = {}
    asked_by: dict[str, np.ndarray] = {}
    no_context = None
    for selector in selectors:
        started = time.perf_counter()
        asked = asked_by[selector] = ask(reward, pairs, pool_rows, selector, max(ks), seed)
        npbtl[selector] = score_asked(reward, pairs, asked, target_rows)[ks]
        by_k = []
        for k in ks:
            if k == 0 and no_context is not None:
                by_k.append(no_context)
                continue
            log.info(
                "%s questions, k = %d: scoring NP-DPO on %d targets", selector, k, target_rows.size
            )
            by_k.append(
                implicit_reward_accuracy(
                    policy.policy,
                    policy.use_latent,
                    policy.per_token,
                    pairs,
                    tokens,
                    _first_k(asked, k, target_rows),
                    references,
                )
            )
            if k == 0:
                no_context = by_k[-1]
        npdpo[selector] = np.stack(by_k)
        log.info(
            "%s questions: NP-DPO implicit accuracy at k = %s: %s (%.0f s)",
            selector,
            ks,
            np.round(npdpo[selector].mean((1, 2)), 1).tolist(),
            time.perf_counter() - started,
        )
    out: dict = {
        "ks": ks,
        "users": users,
        "pool_size": pool_size,
        "targets": num_targets,
        "target_rows": target_rows.tolist(),  # pair rows of the split, per user
        "asked": {s: a.tolist() for s, a in asked_by.items()},  # in the order asked
    }
    for name, correct in (("npdpo", npdpo), ("npbtl", npbtl)):
        out[name] = _summaries(correct, prompts, seed)
        out[name]["by_type"] = {
            s: {
                t: c[:, user_types == t].mean((1, 2)).tolist()
                for t in sorted(set(user_types.tolist()))
            }
            for s, c in correct.items()
        }
    return out


def generation_after_questions(
    reward: nn.Module,
    policy: PolicyCheckpoint,
    job: PolicyJobConfig,
    text: pa.Table,
    pairs: PairTable,
    selectors: list[str],
    ks: list[int],
    num_prompts: int,
    pool_size: int,
    max_new_tokens: int,
    seed: int,
) -> dict:
    """What the policy writes for each steer type's users after k of their questions:

    {"prompts", "ks", "by_type": {type: {"attribute", "prefers",
        "answers": {selector: {k: {mean, sem, values, degenerate, texts}}},
        "move": {selector: {k: paired interval of the signed change from k = 0}},
        "vs_random": {selector: {k: paired interval of the signed difference}}}}}"""
    _check_study(reward, policy, ks)
    if 0 not in ks:
        raise ValueError(f"k = {ks}: the moves are measured from k = 0, which must be among them")
    prompt_ids, chosen_ids, prompts = study_prompts(text, num_prompts)
    by_prompt = np.arange(len(prompts))  # one user of each type per prompt: the bootstrap unit
    rng = np.random.default_rng(seed)
    out: dict = {"prompts": len(prompts), "ks": ks, "pool_size": pool_size, "by_type": {}}
    for user_type in job.data.steer.types:
        name, score = user_type.name, SCORERS[user_type.attribute]
        others = np.flatnonzero((pairs.user_type == name) & ~np.isin(prompt_ids, chosen_ids))
        if len(others) < pool_size:
            raise ValueError(
                f"{name} users: {len(others)} pairs lie outside the {len(prompts)} prompts "
                f"answered, fewer than a pool of {pool_size}"
            )
        pools = np.stack([rng.choice(others, size=pool_size, replace=False) for _ in prompts])
        answers: dict[str, dict[int, dict]] = {}
        asked_by: dict[str, np.ndarray] = {}
        for selector in selectors:
            asked = asked_by[selector] = ask(reward, pairs, pools, selector, max(ks), seed)
            answers[selector] = {}
            for k in ks:
                if k == 0 and selector != selectors[0]:
                    answers[selector][0] = answers[selectors[0]][0]
                    continue
                started = time.perf_counter()
                z = user_latents(policy, [context_of(pairs, row[:k]) for row in asked])
                texts = generate(policy, prompts, z, max_new_tokens, decoding=job.policy.decoding)
                values = [score(t) for t in texts]
                answers[selector][k] = {
                    **mean_sem(values),
                    "values": values,
                    "degenerate": float(np.mean([degenerate(t) for t in texts])),
                    "texts": texts,
                }
                log.info(
                    "%s users after %d %s questions: %s %.2f (%.0f s)",
                    name,
                    k,
                    selector,
                    user_type.attribute,
                    np.mean(values),
                    time.perf_counter() - started,
                )
        sign = 1.0 if user_type.prefers == "higher" else -1.0
        signed = {s: {k: sign * np.asarray(answers[s][k]["values"]) for k in ks} for s in selectors}
        out["by_type"][name] = {
            "attribute": user_type.attribute,
            "prefers": user_type.prefers,
            "answers": answers,
            "asked": {s: a.tolist() for s, a in asked_by.items()},  # pair rows, in order
            "move": {
                s: {k: mean_interval(v[k] - v[0], by_prompt, seed) for k in ks}
                for s, v in signed.items()
            },
            "vs_random": {
                s: {k: mean_interval(v[k] - signed["random"][k], by_prompt, seed) for k in ks}
                for s, v in signed.items()
                if s != "random" and "random" in signed
            },
        }
    return out


def questions_checks(accuracy: dict, generation: dict) -> dict:
    """BALD against random, paired: never behind in implicit accuracy (no interval wholly below
    0), and at the largest generation k each type's answers moved toward its preference from
    k = 0 (interval above 0) with no degenerate answer at any k."""
    behind = [
        k
        for k, d in zip(accuracy["ks"], accuracy["npdpo"]["vs_random"]["bald"], strict=True)
        if d["high"] < 0
    ]
    checks = {
        "npdpo after bald questions >= random at every k": {
            "vs_random": accuracy["npdpo"]["vs_random"]["bald"],
            "behind_at": behind,
            "pass": not behind,
        }
    }
    largest = max(generation["ks"])
    for name, result in generation["by_type"].items():
        move = result["move"]["bald"][largest]
        worst = max(a["degenerate"] for by_k in result["answers"].values() for a in by_k.values())
        checks[f"{name} answers move toward their preference after {largest} bald questions"] = {
            "move": move,
            "vs_random": result["vs_random"]["bald"][largest],
            "most_degenerate": worst,
            "pass": move["low"] > 0 and worst == 0,
        }
    return checks
