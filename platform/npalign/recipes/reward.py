"""The reward recipe: BTL, DPL, NP-BTL (any registered reward model) and the per-type BTL oracle
on any data source; text sources are embedded by a frozen encoder first (Ray Data)."""

from __future__ import annotations

from npalign.config import EvalConfig, RewardJobConfig
from npalign.data.embed import embed_pairs
from npalign.data.sources import source_splits
from npalign.evaluation.accuracy import evaluate_reward_model
from npalign.files import Location
from npalign.models.reward import load_reward_model
from npalign.recipes.outline import Recipe, Splits, no_keys, nothing_first
from npalign.registry import DATA_SOURCES, REWARD_MODELS


def load_splits(job: RewardJobConfig) -> Splits:
    """The source's splits; text is embedded (cached) into the features the models train on."""
    source = DATA_SOURCES[job.data.source]
    tables = source_splits(job.data)
    if not source.text:
        return Splits(tables)
    pairs, _ = embed_pairs(tables, job.data.embed)
    return Splits(pairs, text=tables)


def fit(job: RewardJobConfig, model: str, splits: Splits, files, storage, name, callbacks=None):
    from npalign.train.reward import fit_reward_model  # Ray Train: imported only when training

    return fit_reward_model(job, model, splits.pairs, files, storage, name, callbacks)


def evaluate(
    job: RewardJobConfig, checkpoint: Location, splits: Splits, split: str, settings: EvalConfig
) -> dict:
    model = load_reward_model(checkpoint)
    return evaluate_reward_model(model, splits.pairs[split], settings, job.data.num_targets)


REWARD = Recipe(
    name="reward",
    schema=RewardJobConfig,
    models=REWARD_MODELS,
    oracle_model="btl",
    plot_file="accuracy.png",
    prepare=nothing_first,
    prepared_keys=no_keys,
    load=load_splits,
    fit=fit,
    evaluate=evaluate,
)
