"""The paper's synthetic benchmark (§5.1): options y ~ U[0, 1], users of a few hidden types.

Each type has a piecewise-linear reward with a break at its threshold; a user chooses the option
with the higher reward (ties at random). Every pair is labelled by every type, and pairs are split
train/val/test by pair id, so no pair is in two splits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from npalign.config import SyntheticConfig, UserType
from npalign.data.episodes import context_rows, episode_arrays
from npalign.data.preferences import SPLITS, PairTable, write_pairs


def type_reward(user_type: UserType, y: np.ndarray) -> np.ndarray:
    below = user_type.below.slope * y + user_type.below.intercept
    above = user_type.above.slope * y + user_type.above.intercept
    return np.where(y < user_type.threshold, below, above)


def make_synthetic(config: SyntheticConfig) -> dict[str, PairTable]:
    rng = np.random.default_rng(config.seed)
    options = rng.uniform(0.0, 1.0, size=(config.num_pairs, 2)).astype(np.float32)  # (pairs, 2)
    order = rng.permutation(config.num_pairs)
    bounds = np.cumsum([int(round(f * config.num_pairs)) for f in config.split[:2]])
    split_of_pair = np.empty(config.num_pairs, dtype=object)
    for split, idx in zip(SPLITS, np.split(order, bounds), strict=True):
        split_of_pair[idx] = split

    rows: dict[str, list[PairTable]] = {split: [] for split in SPLITS}
    for user_type in config.types:
        r_a = type_reward(user_type, options[:, 0])
        r_b = type_reward(user_type, options[:, 1])
        tie_break = rng.integers(0, 2, size=config.num_pairs)
        choice = np.where(r_b > r_a, 1, np.where(r_b < r_a, 0, tie_break)).astype(np.int8)
        for split in SPLITS:
            idx = np.flatnonzero(split_of_pair == split)
            rows[split].append(
                PairTable(
                    pair_id=np.array([f"p{i}" for i in idx], dtype=object),
                    prompt_id=np.array([f"p{i}" for i in idx], dtype=object),
                    features_a=options[idx, 0:1],
                    features_b=options[idx, 1:2],
                    user=np.full(len(idx), user_type.name, dtype=object),
                    user_type=np.full(len(idx), user_type.name, dtype=object),
                    choice=choice[idx],
                )
            )
    return {split: concat_pairs(parts) for split, parts in rows.items()}


def concat_pairs(parts: list[PairTable]) -> PairTable:
    return PairTable(
        **{
            field: np.concatenate([getattr(p, field) for p in parts])
            for field in PairTable.__dataclass_fields__
        }
    )


def write_synthetic(config: SyntheticConfig, folder: str | Path) -> dict[str, PairTable]:
    splits = make_synthetic(config)
    for split, pairs in splits.items():
        write_pairs(pairs, Path(folder) / f"{split}.parquet")
    return splits


def bayes_accuracy(pairs: PairTable, episodes) -> np.ndarray:
    """Percent of targets the Bayes-optimal predictor gets right, per episode. (episodes,)

    It knows every type's choice on every pair; given the context it keeps the types consistent
    with the observed choices (users are drawn uniformly over types) and predicts each target by
    their majority, scoring a tie as 1/2.
    """
    types = sorted(set(pairs.user_type))
    pair_index = {p: i for i, p in enumerate(sorted(set(pairs.pair_id)))}
    choices = np.zeros((len(pair_index), len(types)), dtype=np.int8)  # (pairs, types)
    type_index = {t: i for i, t in enumerate(types)}
    rows_pair = np.array([pair_index[p] for p in pairs.pair_id])
    rows_type = np.array([type_index[t] for t in pairs.user_type])
    choices[rows_pair, rows_type] = pairs.choice

    out = []
    targets = episode_arrays(episodes)["target"]
    for context, target in zip(context_rows(episodes), targets, strict=True):
        c_pairs, t_pairs = rows_pair[context], rows_pair[target]
        consistent = (choices[c_pairs] == pairs.choice[context][:, None]).all(axis=0)  # (types,)
        vote_b = choices[t_pairs][:, consistent].mean(axis=1)  # (targets,) share voting b
        observed = pairs.choice[target]
        credit = np.where(vote_b == 0.5, 0.5, (vote_b > 0.5) == observed)
        out.append(credit.mean() * 100)
    return np.array(out)
