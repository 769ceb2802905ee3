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
from npalign.evaluation.statistics import mean_interval, mean_sem
from npalign.inference import ContextEmbeddings, generate, user_latents
from npalign.models.policy import available_device, load_policy

log = logging.getLogger(__name__)


def accuracy_checks(results: dict, sizes: list[int]) -> dict:
    """NP-DPO's implicit accuracy (`evaluate_by_context`'s intervals, a bootstrap over prompts):
    the types' mean at the largest m at least 70 % (A+B >= 140 for two types), the gap to the
    per-type DPO oracle (when trained), each type's rise from the smallest m to the largest (its
    paired interval above 0), and no step in m where a type's accuracy falls (a paired interval
    of the change wholly below 0)."""
    npdpo, largest, smallest = results["npdpo"], max(sizes), min(sizes)
    average = npdpo["average"][largest]
    checks = {
        f"npdpo mean over types at m={largest} >= 70": {
            "mean": average["mean"],
            "ci": average["ci"],
            "sum_over_types": average["sum"],
            "pass": average["mean"] >= 70,
        }
    }
    if "oracle" in results:
        # The oracle's types are scored on episodes of their own: a gap of point estimates.
        gaps = {
            m: results["oracle"]["average"][m]["mean"] - npdpo["average"][m]["mean"] for m in sizes
        }
        checks[f"npdpo within 3 of the per-type oracle at m={largest}"] = {
            "gap_by_m": gaps,
            "pass": gaps[largest] <= 3,
        }
    steps = [f"{a}->{b}" for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
    for user_type in npdpo["by_type"]:
        rise = npdpo["change"][f"{smallest}->{largest}"][user_type]
        checks[f"npdpo [{user_type}] rises from m={smallest} to m={largest}"] = {
            "change": rise,
            "pass": rise["low"] > 0,
        }
        changes = {step: npdpo["change"][step][user_type] for step in steps}
        worst = min(changes, key=lambda step: changes[step]["high"])
        checks[f"npdpo [{user_type}] falls at no step in m"] = {
            "worst_step": worst,
            "change": changes[worst],
            "pass": changes[worst]["high"] >= 0,
        }
    return checks


def study_prompts(text: pa.Table, num_prompts: int) -> tuple[np.ndarray, list[str], list[str]]:
    """(every row's prompt id, the first `num_prompts` prompt ids in sorted order, their
    prompts): the prompts a generation study answers."""
    table = text.to_pydict()
    prompt_ids = np.asarray(table["prompt_id"])
    first_row = {pid: i for i, pid in reversed(list(enumerate(prompt_ids)))}
    chosen_ids = sorted(first_row)[:num_prompts]
    return prompt_ids, chosen_ids, [table["prompt"][first_row[pid]] for pid in chosen_ids]


def context_of(pairs: PairTable, rows: np.ndarray) -> ContextEmbeddings:
    """A user's context of pair `rows`, each with that row's label, as the policy reads it."""
    b_chosen = pairs.choice[rows].astype(bool)[:, None]
    a, b = pairs.features_a[rows], pairs.features_b[rows]
    return ContextEmbeddings(np.where(b_chosen, b, a), np.where(b_chosen, a, b))


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
    prompt_ids, chosen_ids, prompts = study_prompts(text, num_prompts)
    types = {t.name: t for t in job.data.steer.types}
    rng = np.random.default_rng(job.eval.seed)

    npdpo = load_policy(checkpoints["npdpo"], available_device())
    out: dict = {"prompts": len(prompts), "max_new_tokens": tokens, "npdpo": {}, "samples": {}}
    for name, user_type in types.items():
        score = SCORERS[user_type.attribute]
        pool = np.flatnonzero((pairs.user_type == name) & ~np.isin(prompt_ids, chosen_ids))
        out["npdpo"][name] = {}
        drawn = [rng.choice(pool, size=max(job.eval.context_sizes), replace=False) for _ in prompts]
        for m in job.eval.context_sizes:
            started = time.perf_counter()
            z = user_latents(npdpo, [context_of(pairs, largest[:m]) for largest in drawn])
            texts = generate(npdpo, prompts, z, tokens, decoding=job.policy.decoding)
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
    dpo = load_policy(checkpoints["dpo"], available_device())
    pooled = generate(dpo, prompts, None, tokens, decoding=job.policy.decoding)
    with npdpo.policy.reference():  # LoRA and FiLM off: the base model
        base = generate(npdpo, prompts, None, tokens, decoding=job.policy.decoding)
    out["samples"]["dpo (pooled)"], out["samples"]["base"] = pooled[0], base[0]
    out["prompt_0"] = prompts[0]
    attributes = sorted({t.attribute for t in types.values()})
    out["dpo"] = {
        a: {**mean_sem([SCORERS[a](t) for t in pooled]), "values": [SCORERS[a](t) for t in pooled]}
        for a in attributes
    }
    out["base"] = {a: mean_sem([SCORERS[a](t) for t in base]) for a in attributes}
    return out


# One word three times in a row, letters only ("impairment impairment impairment"; not
# "00:00:00" or "$1,000,000,000").
STUTTER = re.compile(r"\b([^\W\d_]+)(?:\s+\1\b){2}", re.I)
# Eight or more numbers (ordinals too) in a comma-separated list.
NUMBER_RUN = re.compile(r"\b\d+(?:st|nd|rd|th)?(?:,\s+\d+(?:st|nd|rd|th)?){7,}")


def _counts_up(run: str) -> bool:
    """A list of numbers that mostly counts up by one ("22, 23, 24, 25, ..."), not a list of
    scores, prices or years."""
    numbers = [int(n) for n in re.findall(r"\d+", run)]
    steps = [b - a for a, b in zip(numbers, numbers[1:], strict=False)]
    return sum(step == 1 for step in steps) >= len(steps) / 2


def degenerate(text: str) -> bool:
    """Text no reader would accept, whatever its attribute score: a "word" of over 25 letters
    (tokens glued together: one word to the length scorer), one word making up over half of
    a response of 8 or more words, a sentence of 5 or more words said twice, or over half of
    its word 3-grams repeats of earlier ones (loops inside a sentence too: "I'm sorry, I'm
    sorry, I'm sorry."), and the loops a no-repeat-n-gram guard leaves: one word three times
    in a row ("impairment impairment impairment") or a run of 8 numbers ("22, 23, 24, 25, ...").
    Loops inflate a length score."""
    words = text.split()
    if any(len(w) > 25 for w in words):
        return True
    if STUTTER.search(text) or any(_counts_up(run.group()) for run in NUMBER_RUN.finditer(text)):
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
    m=0 value and pooled DPO's, the paired difference's interval (a bootstrap over the prompts)
    above 0, and no answer is degenerate (a scorer is easy to game with garbage:
    'raciesracies...' is one word long)."""
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
            moved = sign * (last - np.asarray(values))  # (prompts,), one answer each
            prompts = np.arange(len(moved))
            toward = mean_interval(moved, prompts, job.eval.seed)
            checks[
                f"generated {user_type.attribute} [{user_type.name}] m={max(sizes)} vs {against}"
            ] = {
                "toward_preference": toward,
                "toward_preference_readable_only": mean_interval(
                    moved[readable], prompts[readable], job.eval.seed
                ),
                "pass": toward["low"] > 0,
            }
    return checks


def plot_generation(study: dict, job: PolicyJobConfig, path: Path) -> None:
    """The generated attribute vs m per user type, pooled DPO and the base model as lines: a
    panel per attribute, holding the types that prefer on it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = job.eval.context_sizes
    attributes = list(study["dpo"])
    fig, axes = plt.subplots(1, len(attributes), figsize=(6 * len(attributes), 4), squeeze=False)
    for attribute, ax in zip(attributes, axes[0], strict=True):
        for user_type in job.data.steer.types:
            if user_type.attribute != attribute:
                continue
            by_m = study["npdpo"][user_type.name]
            ax.errorbar(
                sizes,
                [by_m[m]["mean"] for m in sizes],
                yerr=[by_m[m]["sem"] for m in sizes],
                marker="o",
                capsize=3,
                label=f"NP-DPO, {user_type.name} users",
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
    save_plot(fig, axes[0], path)
