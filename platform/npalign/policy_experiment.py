"""The policy experiment end to end: text preferences → embeddings (for contexts) and tokens (for
targets) → NP-DPO, pooled-DPO and per-type oracle DPO fits under Ray Train → implicit-reward
accuracy per user type vs context size, on held-out targets never in the context.

As for the reward experiment, everything that can be wrong with the input is checked before the
run folder is created.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from npalign.config import (
    EvalConfig,
    ModelConfig,
    PolicyJobConfig,
    RewardJobConfig,
    RunSettings,
)
from npalign.data.episodes import episode_arrays
from npalign.data.preferences import PairTable, PreferenceDataError
from npalign.data.sequences import TokenizedPairs, collate_policy, tokenize_pairs
from npalign.evaluate import (
    combine_types,
    evaluate_by_context,
    evaluation_episodes,
    format_table,
    plot_accuracy,
)
from npalign.experiment import (
    config_yaml,
    embed_tables,
    sample_train_val,
    text_tables,
    write_episodes,
)
from npalign.files import write_json, write_text
from npalign.models.policy import load_policy, preference_metrics

log = logging.getLogger(__name__)

PolicyData = dict[str, tuple[PairTable, TokenizedPairs]]


@dataclass
class PolicyRun:
    folder: Path
    results: dict[str, dict]  # kind → evaluate_by_context(...)
    table: str


def policy_data(job: PolicyJobConfig) -> PolicyData:
    """Per split: the PairTable (embeddings, for contexts) and the tokens (for targets)."""
    from transformers import AutoTokenizer

    from npalign.models.pretrained import model_path

    if job.data.source not in ("steer", "text"):
        raise PreferenceDataError(
            f"the policy trains on text: data.source must be 'steer' or 'text', "
            f"not {job.data.source!r}"
        )
    tables = text_tables(job.data)
    tokenizer = AutoTokenizer.from_pretrained(model_path(job.policy.base))
    p = job.policy
    tokens = {
        split: tokenize_pairs(
            table, tokenizer, p.max_prompt_tokens, p.max_response_tokens, f"{split} split"
        )
        for split, table in tables.items()
    }
    pairs = embed_tables(tables, job.data)
    return {split: (pairs[split], tokens[split]) for split in tables}


def encoder_job(job: PolicyJobConfig) -> RewardJobConfig:
    """The NP-BTL job on the policy's pairs whose context encoder can start z's encoder
    (`policy.encoder_init`): same data and embeddings, the policy's encoder dimensions, many
    cheap episodes of 20 targets (the reward model trains on embeddings, not tokens)."""
    p = job.policy
    return RewardJobConfig(
        run=RunSettings(name=f"{job.run.name}-npbtl", output_dir=job.run.output_dir),
        data=job.data.model_copy(
            update={"num_targets": 20, "train_episodes": 16_000, "val_episodes": 500}
        ),
        models=["npbtl"],
        model=ModelConfig(
            hidden_dim=p.hidden_dim, latent_dim=p.latent_dim, aggregation=p.aggregation
        ),
        train=job.train.model_copy(update={"batch_size": 64, "epochs": 2, "lr": 1e-3}),
        eval=EvalConfig(context_sizes=job.eval.context_sizes, num_episodes=500, seed=job.eval.seed),
    )


def select_type(data: PolicyData, user_type: str) -> PolicyData:
    out = {}
    for split, (pairs, tokens) in data.items():
        rows = np.flatnonzero(pairs.user_type == user_type)
        out[split] = (
            pairs.select(rows),
            TokenizedPairs(
                [tokens.prompt[i] for i in rows],
                [tokens.response_a[i] for i in rows],
                [tokens.response_b[i] for i in rows],
                tokens.pad_id,
            ),
        )
    return out


@torch.no_grad()
def implicit_reward_accuracy(
    policy,
    use_latent: bool,
    beta: float,
    pairs: PairTable,
    tokens: TokenizedPairs,
    episodes: pa.Table,
    references: dict[int, torch.Tensor],
    batch_size: int = 8,
) -> np.ndarray:
    """Percent of target pairs whose DPO implicit reward ranks the chosen response higher, per
    episode. (episodes,) `references` caches π_ref's (chosen, rejected) log-probs by pair row:
    they do not depend on the context, and every context size scores the same test pairs."""
    rows = episode_arrays(episodes, ("context", "target"))
    out = []
    for start in range(0, len(rows["target"]), batch_size):
        part = {k: v[start : start + batch_size] for k, v in rows.items()}
        targets = part["target"].reshape(-1).tolist()
        known = None
        if all(t in references for t in targets):
            known = torch.cat([references[t] for t in targets])  # (sequences,)
        output = policy(collate_policy(part, pairs, tokens), use_latent, known)
        for t, reference in zip(targets, output.reference.reshape(-1, 2), strict=True):
            references[t] = reference
        _, metrics = preference_metrics(output, beta)
        out.append(metrics["accuracy"].numpy() * 100)
    return np.concatenate(out)


def evaluate_policy(
    job: PolicyJobConfig, checkpoint: Path, data: PolicyData, split: str = "test"
) -> dict:
    """Implicit-reward accuracy by context size (job.eval) on episodes of `split`."""
    loaded = load_policy(checkpoint)
    pairs, tokens = data[split]
    references: dict[int, torch.Tensor] = {}
    return evaluate_by_context(
        lambda episodes: implicit_reward_accuracy(
            loaded.policy,
            loaded.use_latent,
            job.policy.beta,
            pairs,
            tokens,
            episodes,
            references,
        ),
        pairs,
        job.eval,
        job.data.num_targets,
        context_blind=not loaded.use_latent,
    )


def run_policy_experiment(job: PolicyJobConfig) -> PolicyRun:
    from npalign.train.policy import fit_policy  # Ray Train: imported only when training

    data = policy_data(job)
    pairs = {split: p for split, (p, _) in data.items()}
    episodes = sample_train_val(job.data, pairs)
    evaluation_episodes(
        pairs["test"], job.eval.context_sizes, 1, job.data.num_targets, job.eval.seed
    )

    folder = Path(job.run.output_dir) / f"{job.run.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder.mkdir(parents=True, exist_ok=False)
    write_text(folder / "config.yaml", config_yaml(job))
    files = write_episodes(episodes, folder / "episodes")
    log.info("run folder: %s", folder)

    results: dict[str, dict] = {}
    for kind in job.models:
        if kind != "oracle":
            fit = fit_policy(job, kind == "npdpo", data, files, folder / "checkpoints", kind)
            results[kind] = evaluate_policy(job, Path(fit.checkpoint.path), data)
            results[kind]["checkpoint"] = fit.checkpoint.path
            continue
        # One plain DPO per user type, trained and scored on that type's labels only.
        oracle: dict = {"average": {}, "by_type": {}, "checkpoint": {}}
        for user_type in sorted(set(pairs["train"].user_type)):
            typed = select_type(data, user_type)
            name = f"oracle-{user_type}"
            typed_pairs = {split: p for split, (p, _) in typed.items()}
            typed_files = write_episodes(
                sample_train_val(job.data, typed_pairs), folder / "episodes" / name
            )
            fit = fit_policy(job, False, typed, typed_files, folder / "checkpoints", name)
            scores = evaluate_policy(job, Path(fit.checkpoint.path), typed)
            oracle["by_type"][user_type] = scores["by_type"][user_type]
            oracle["checkpoint"][user_type] = fit.checkpoint.path
        for m in job.eval.context_sizes:
            oracle["average"][m] = combine_types([b[m] for b in oracle["by_type"].values()])
        results[kind] = oracle

    table = format_table(results, job.eval.context_sizes)
    write_json(
        folder / "metrics.json", {"results": results, "context_sizes": job.eval.context_sizes}
    )
    write_text(folder / "table.txt", table + "\n")
    plot_accuracy(results, job.eval.context_sizes, folder / "implicit_accuracy.png")
    return PolicyRun(folder, results, table)
