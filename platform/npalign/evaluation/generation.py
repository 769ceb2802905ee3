"""What a steerable policy writes: the generated-attribute study and the checks on it.

For held-out prompts, NP-DPO answers for users of each steer type given m of their choices; each
answer is scored with the steer task's attribute scorer and checked for degenerate text (loops,
glued tokens), against pooled DPO and the base model on the same prompts. The checks are what
the steer policy benchmark reports.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from npalign.config import PolicyJobConfig
from npalign.data.preferences import PairTable
from npalign.data.steer import SCORERS, SENTENCE_END
from npalign.evaluation.accuracy import save_plot
from npalign.inference import ContextEmbeddings, generate, user_latents
from npalign.models.policy import load_policy

log = logging.getLogger(__name__)


def mean_sem(values) -> dict[str, float]:
    """Mean, its standard error and the count of a 1-d sample."""
    values = np.asarray(values, dtype=float)
    return {
        "mean": float(values.mean()),
        "sem": float(values.std(ddof=1) / np.sqrt(len(values))),
        "n": len(values),
    }


def accuracy_checks(results: dict, sizes: list[int]) -> dict:
    """NP-DPO's implicit accuracy: A+B at the largest m, and each type's trend in m."""
    largest = max(sizes)
    by_type = results["npdpo"]["by_type"]
    total = sum(by_type[t][largest]["mean"] for t in by_type)
    checks = {f"npdpo A+B at m={largest} >= 140": {"sum": total, "pass": total >= 140}}
    for user_type, by_m in by_type.items():
        # "Does not fall": each step's drop, if any, is within the two estimates' combined SEM.
        drops = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            slack = float(np.hypot(by_m[a]["sem"], by_m[b]["sem"]))
            drops.append(by_m[a]["mean"] - by_m[b]["mean"] - slack)
        checks[f"npdpo [{user_type}] non-decreasing in m (within SEM)"] = {
            "worst_drop_beyond_sem": max(drops),
            # Accuracies come from float32 sums: a drop of exactly one SEM (100 → 96.67 ± 3.33
            # over 30 episodes) computes as a few 1e-6 points beyond it.
            "pass": max(drops) <= 1e-4,
        }
    return checks


def generation_study(
    job: PolicyJobConfig,
    checkpoints: dict[str, str],
    text: pa.Table,
    pairs: PairTable,
    num_prompts: int,
    tokens: int,
) -> dict:
    """Greedy answers to `num_prompts` prompts of one split (`text`, and `pairs`: its
    embeddings, row-aligned): NP-DPO (checkpoints["npdpo"]) for a user of each steer type
    given m choices (per prompt one draw of the largest context from the split's other
    prompts, whose first m pairs are the context at m, as in the accuracy evaluation), pooled
    DPO (checkpoints["dpo"]) and the base model, each answer scored with the type's attribute
    scorer. Returns the attribute summaries and a few sample texts."""
    test = text.to_pydict()
    prompt_ids = np.asarray(test["prompt_id"])
    first_row = {pid: i for i, pid in reversed(list(enumerate(prompt_ids)))}
    chosen_ids = sorted(first_row)[:num_prompts]
    prompts = [test["prompt"][first_row[pid]] for pid in chosen_ids]
    types = {t.name: t for t in job.data.steer.types}
    rng = np.random.default_rng(job.eval.seed)

    npdpo = load_policy(Path(checkpoints["npdpo"]))
    out: dict = {"prompts": len(prompts), "max_new_tokens": tokens, "npdpo": {}, "samples": {}}
    for name, user_type in types.items():
        score = SCORERS[user_type.attribute]
        pool = np.flatnonzero((pairs.user_type == name) & ~np.isin(prompt_ids, chosen_ids))
        out["npdpo"][name] = {}
        drawn = [rng.choice(pool, size=max(job.eval.context_sizes), replace=False) for _ in prompts]
        for m in job.eval.context_sizes:
            contexts = []
            for largest in drawn:
                rows = largest[:m]
                b_chosen = pairs.choice[rows].astype(bool)[:, None]
                a, b = pairs.features_a[rows], pairs.features_b[rows]
                contexts.append(
                    ContextEmbeddings(np.where(b_chosen, b, a), np.where(b_chosen, a, b))
                )
            started = time.perf_counter()
            texts = generate(npdpo, prompts, user_latents(npdpo, contexts), tokens)
            values = [score(t) for t in texts]
            out["npdpo"][name][m] = {
                **mean_sem(values),
                "values": values,
                "degenerate": float(np.mean([degenerate(t) for t in texts])),
                "texts": texts,
            }
            out["samples"][f"npdpo [{name}] m={m}"] = texts[0]
            log.info(
                "generated for %s users, m=%d: %s %.1f (%.0f s)",
                name,
                m,
                user_type.attribute,
                np.mean(values),
                time.perf_counter() - started,
            )
    dpo = load_policy(Path(checkpoints["dpo"]))
    pooled = generate(dpo, prompts, None, tokens)
    with npdpo.policy.reference():  # LoRA and FiLM off: the base model
        base = generate(npdpo, prompts, None, tokens)
    out["samples"]["dpo (pooled)"], out["samples"]["base"] = pooled[0], base[0]
    out["prompt_0"] = prompts[0]
    attributes = {t.attribute for t in types.values()}
    out["dpo"] = {
        a: {**mean_sem([SCORERS[a](t) for t in pooled]), "values": [SCORERS[a](t) for t in pooled]}
        for a in attributes
    }
    out["base"] = {a: mean_sem([SCORERS[a](t) for t in base]) for a in attributes}
    return out


def degenerate(text: str) -> bool:
    """Text no reader would accept, whatever its attribute score: a "word" of over 25 letters
    (tokens glued together: one word to the length scorer), one word making up over half of
    a response of 8 or more words, a sentence of 5 or more words said twice, or over half of
    its word 3-grams repeats of earlier ones (loops inside a sentence too: "I'm sorry, I'm
    sorry, I'm sorry."). Loops inflate a length score."""
    words = text.split()
    if any(len(w) > 25 for w in words):
        return True
    if len(words) >= 8 and max(words.count(w) for w in set(words)) > len(words) / 2:
        return True
    sentences = [s.strip() for s in SENTENCE_END.split(text) if len(s.split()) >= 5]
    if len(sentences) != len(set(sentences)):
        return True
    tokens = re.findall(r"\w+", text.lower())
    grams = [tuple(tokens[i : i + 3]) for i in range(len(tokens) - 2)]
    return len(grams) > 0 and len(set(grams)) < len(grams) / 2


def generation_checks(study: dict, job: PolicyJobConfig) -> dict:
    """For each type: at the largest m its attribute lies on its preferred side of both its own
    m=0 value and pooled DPO's, by more than the SEM of the paired differences over the same
    prompts, and no answer is degenerate (a scorer is easy to game with garbage: 'raciesracies...'
    is one word long)."""
    sizes, checks = job.eval.context_sizes, {}
    for user_type in job.data.steer.types:
        sign = 1 if user_type.prefers == "higher" else -1
        by_m = study["npdpo"][user_type.name]
        last = np.asarray(by_m[max(sizes)]["values"])
        # The same move on the prompts whose answer at the largest m reads as text: loops
        # lengthen an answer, so a length move must not rest on them.
        readable = np.array([not degenerate(t) for t in by_m[max(sizes)]["texts"]])
        share = max(by_m[m]["degenerate"] for m in sizes)
        checks[f"generated text [{user_type.name}] not degenerate at any m"] = {
            "worst_degenerate_share": share,
            "pass": share == 0,
        }
        for against, values in (
            (f"m={min(sizes)}", by_m[min(sizes)]["values"]),
            ("pooled dpo", study["dpo"][user_type.attribute]["values"]),
        ):
            moved = sign * (last - np.asarray(values))
            stats = mean_sem(moved)
            checks[
                f"generated {user_type.attribute} [{user_type.name}] m={max(sizes)} vs {against}"
            ] = {
                "toward_preference": stats,
                "toward_preference_readable_only": mean_sem(moved[readable]),
                # Beyond its SEM: on 16 prompts a shift of a few words is noise.
                "pass": stats["mean"] > stats["sem"],
            }
    return checks


def plot_generation(study: dict, job: PolicyJobConfig, path: Path) -> None:
    """The generated attribute vs m per user type, pooled DPO and the base model as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = job.eval.context_sizes
    attribute = job.data.steer.types[0].attribute
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, by_m in study["npdpo"].items():
        ax.errorbar(
            sizes,
            [by_m[m]["mean"] for m in sizes],
            yerr=[by_m[m]["sem"] for m in sizes],
            marker="o",
            capsize=3,
            label=f"NP-DPO, {name} users",
        )
    for label, style in (("dpo", "k--"), ("base", "k:")):
        ax.axhline(
            study[label][attribute]["mean"],
            linestyle=style[1:],
            color="k",
            label="pooled DPO" if label == "dpo" else "base model",
        )
    ax.set_xlabel("user's context pairs (m)")
    ax.set_ylabel(f"generated {attribute} (steer scorer)")
    ax.set_xticks(sizes)
    save_plot(fig, ax, path)
