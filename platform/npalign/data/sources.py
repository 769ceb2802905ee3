"""The data sources a job can name in `data.source`, registered in `DATA_SOURCES`.

A source turns the job's `DataConfig` into its train/val/test splits, either as text preference
tables (prompt, responses, user, choice: the recipe embeds them, and a policy trains on their
tokens) or as PairTables of features ready for a reward model. A new source is a function here
(or in its own module) and one `DATA_SOURCES.register` line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from npalign.config import DataConfig, TextSourceConfig
from npalign.data.preferences import PairTable, PreferenceDataError, read_splits
from npalign.data.rated import rated_pairs, rated_table_prompts
from npalign.data.synthetic import bayes_accuracy, make_synthetic
from npalign.data.text import (
    BadRows,
    check_text_splits,
    load_records,
    load_text_pairs,
    read_text_splits,
    split_by_prompt,
    text_table,
)
from npalign.registry import DATA_SOURCES


@dataclass(frozen=True)
class DataSource:
    load: Callable[[DataConfig], dict[str, pa.Table] | dict[str, PairTable]]
    text: bool  # text tables (embedded by the recipe) or PairTables of features
    needs_path: bool  # reads `data.path`
    description: str
    # Per-episode accuracy of the best possible predictor, where the source knows the users'
    # true rewards: (test pairs, episode table) → (episodes,) percent. Reported beside the models.
    limit: Callable[[PairTable, pa.Table], np.ndarray] | None = None
    limit_label: str = "best possible"


def source_splits(data: DataConfig) -> dict[str, pa.Table] | dict[str, PairTable]:
    """The splits of the source `data.source` names, with a validation split big enough to
    choose a checkpoint (and settings) on."""
    splits = DATA_SOURCES[data.source].load(data)
    rows = len(splits["val"])
    if rows < data.min_val_pairs:
        where = f"{data.source} ({data.path})" if data.path else data.source
        raise PreferenceDataError(
            f"{where}: the val split has {rows} labelled pairs, fewer than data.min_val_pairs = "
            f"{data.min_val_pairs}: a checkpoint chosen on it would be chosen on noise (one pair "
            f"moves its accuracy by {100 / max(rows, 1):.1f} points). Give it more data "
            "(data.records.split_fractions for a single file) or lower data.min_val_pairs."
        )
    return splits


def steer_splits(data: DataConfig) -> dict[str, pa.Table]:
    from npalign.data.steer import build_steer  # the corpus package is needed only here

    return read_text_splits(build_steer(data.steer))


def records_splits(config: TextSourceConfig, seed: int) -> dict[str, pa.Table]:
    """One source of preference rows (pairs, TRL's format or rated responses), split by prompt
    (seeded) into checked text tables."""
    if config.format == "rated":
        bad = BadRows(config.source)
        columns = config.columns
        records = load_records(config.source, config.split)
        try:
            prompts = rated_table_prompts(
                records, columns.prompt, columns.response, config.attributes, bad
            )
        except KeyError as e:
            raise PreferenceDataError(
                f"{config.source}: no column {e.args[0]!r} (data.records.columns and "
                "data.records.attributes name the source's columns)"
            ) from None
        rows = rated_pairs(prompts, config.attributes, config.margin, config.conflicting_only, bad)
        bad.check(config.max_bad_fraction)
    else:
        rows = load_text_pairs(config)
    if not rows:
        raise PreferenceDataError(f"{config.source}: no preference pairs in it")
    splits = split_by_prompt(rows, config.split_fractions, seed)
    tables = {split: text_table(rows) for split, rows in splits.items()}
    names = {split: f"{config.source} ({split} split)" for split in tables}
    return check_text_splits(tables, config.source, names)


DATA_SOURCES.register("synthetic")(
    DataSource(
        lambda data: make_synthetic(data.synthetic),
        text=False,
        needs_path=False,
        description="the paper's §5.1 task, generated from data.synthetic",
        limit=bayes_accuracy,
        limit_label="Bayes limit",
    )
)
DATA_SOURCES.register("parquet")(
    DataSource(
        lambda data: read_splits(data.path),
        text=False,
        needs_path=True,
        description="a folder of train/val/test.parquet preference tables with features",
    )
)
DATA_SOURCES.register("text")(
    DataSource(
        lambda data: read_text_splits(data.path),
        text=True,
        needs_path=True,
        description="a folder of train/val/test.parquet text preference tables",
    )
)
DATA_SOURCES.register("records")(
    DataSource(
        lambda data: records_splits(
            data.records.model_copy(update={"source": data.path}), data.seed
        ),
        text=True,
        needs_path=True,
        description="preference rows in one .jsonl/.parquet file, saved dataset or hub name "
        "(pairs, TRL's prompt/chosen/rejected, or rated responses; data.records maps the "
        "columns), split by prompt",
    )
)
DATA_SOURCES.register("steer")(
    DataSource(
        steer_splits,
        text=True,
        needs_path=False,
        description="the embedded default text task, built offline from data.steer",
    )
)
