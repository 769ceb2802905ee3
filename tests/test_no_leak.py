"""On every data source the recipes read: no target pair of an episode is in its context,
compared by content (the prompt and the two responses in either order, or the two feature
vectors in either order), in training, validation and evaluation episodes. Duplicated rows
(swapped, or one pair under two ids) must be refused or merged by the loaders, not sampled as
two pairs, or a target could be scored with its own label in the context."""

import hashlib
import json

import numpy as np
import pyarrow as pa
import pytest

from npalign.config import DataConfig
from npalign.data.episodes import episode_arrays, sample_train_val
from npalign.data.preferences import PairTable
from npalign.data.text import pair_id_of, write_text_pairs
from npalign.evaluation.accuracy import evaluation_episodes
from npalign.registry import DATA_SOURCES

SMALL_STEER = {"stories": 30, "pairs_per_prompt": 6}


def steer_rows() -> dict[str, list[dict]]:
    tables = DATA_SOURCES["steer"].load(DataConfig(source="steer", steer=SMALL_STEER))
    return {split: table.to_pylist() for split, table in tables.items()}


def trl_records(rows: dict[str, list[dict]]) -> list[dict]:
    """The steer task's rows in TRL's format, half of them as chat messages."""
    out = []
    for i, row in enumerate(r for split in rows.values() for r in split):
        chosen, rejected = row["response_a"], row["response_b"]
        if row["choice"] == 1:
            chosen, rejected = rejected, chosen
        prompt = row["prompt"]
        if i % 2:
            prompt = [{"role": "user", "content": prompt}]
            chosen = [{"role": "assistant", "content": chosen}]
            rejected = [{"role": "assistant", "content": rejected}]
        out.append(
            {
                "prompt": prompt,
                "chosen": chosen,
                "rejected": rejected,
                "user": row["user"],
                "user_type": row["user_type"],
            }
        )
    return out


def write_trl_jsonl(path, rows: dict[str, list[dict]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in trl_records(rows)))


def write_rated_parquet(path, rows: dict[str, list[dict]]) -> None:
    """The steer task's responses as a rated table: one row per (prompt, response), scored on
    brevity (fewer words) and detail (more words)."""
    import pyarrow.parquet as pq

    seen, table = set(), []
    for row in (r for split in rows.values() for r in split):
        for response in (row["response_a"], row["response_b"]):
            if (row["prompt"], response) not in seen:
                seen.add((row["prompt"], response))
                words = len(response.split())
                table.append(
                    {
                        "question": row["prompt"],
                        "answer": response,
                        "brevity": -words,
                        "detail": words,
                    }
                )
    pq.write_table(pa.Table.from_pylist(table), path)


RATED = {
    "format": "rated",
    "attributes": ["brevity", "detail"],
    "margin": 10,
    "columns": {"prompt": "question", "response": "answer"},
}


def data_config(source: str, tmp_path) -> DataConfig:
    common = {"max_context": 5, "num_targets": 4, "train_episodes": 400, "val_episodes": 100}
    if source == "synthetic":
        return DataConfig(source=source, synthetic={"num_pairs": 400}, **common)
    if source == "parquet":  # feature tables a user wrote: here the synthetic task's
        from npalign.config import SyntheticConfig
        from npalign.data.preferences import write_pairs
        from npalign.data.synthetic import make_synthetic

        for split, pairs in make_synthetic(SyntheticConfig(num_pairs=400)).items():
            write_pairs(pairs, tmp_path / f"{split}.parquet")
        return DataConfig(source=source, path=str(tmp_path), **common)
    if source == "steer":
        return DataConfig(source=source, steer=SMALL_STEER, **common)
    rows = steer_rows()
    if source == "text":
        for split, split_rows in rows.items():
            write_text_pairs(split_rows, tmp_path / f"{split}.parquet")
        return DataConfig(source=source, path=str(tmp_path), **common)
    if source == "records (rated)":
        write_rated_parquet(tmp_path / "rated.parquet", rows)
        path, records = tmp_path / "rated.parquet", RATED
    else:
        write_trl_jsonl(tmp_path / "prefs.jsonl", rows)
        path, records = (
            tmp_path / "prefs.jsonl",
            {"format": "trl", "columns": {"user_type": "user_type"}},
        )
    return DataConfig(source="records", path=str(path), records=records, **common)


def content_keys(split) -> np.ndarray:
    """Each row's content: a hash of the prompt and the responses (text), or of the two
    feature vectors (features), in either order."""
    if isinstance(split, pa.Table):
        columns = split.to_pydict()
        keys = map(pair_id_of, columns["prompt"], columns["response_a"], columns["response_b"])
        return np.array(list(keys), dtype=object)
    sides = zip(split.features_a, split.features_b, strict=True)
    keys = [hashlib.sha256(b"|".join(sorted((a.tobytes(), b.tobytes())))) for a, b in sides]
    return np.array([k.hexdigest() for k in keys], dtype=object)


def sampled_pairs(split) -> PairTable:
    """What episode sampling reads (users, ids): a text table without its features."""
    if isinstance(split, PairTable):
        return split
    columns = split.to_pydict()
    none = np.zeros((split.num_rows, 1), np.float32)
    return PairTable(
        *(np.asarray(columns[c], dtype=object) for c in ("pair_id", "prompt_id")),
        none,
        none,
        np.asarray(columns["user"], dtype=object),
        np.asarray(columns["user_type"], dtype=object),
        np.asarray(columns["choice"], dtype=np.int8),
    )


@pytest.mark.parametrize(
    "source", ["synthetic", "parquet", "steer", "text", "records", "records (rated)"]
)
def test_no_target_of_an_episode_is_in_its_context_by_content(source, tmp_path):
    data = data_config(source, tmp_path)
    splits = DATA_SOURCES[data.source].load(data)
    pairs = {split: sampled_pairs(table) for split, table in splits.items()}
    episodes = {f"{k} episodes": v for k, v in sample_train_val(data, pairs).items()}
    for m, table in evaluation_episodes(pairs["test"], [0, 1, 5], 200, 4, seed=1).items():
        episodes[f"test episodes, m={m}"] = table
    for name, table in episodes.items():
        assert leaks(table, content_keys(splits[name.split()[0]])) == 0, f"{source}, {name}"
    assert sum(t.num_rows for t in episodes.values()) == 400 + 100 + 3 * 200


def leaks(episodes: pa.Table, keys: np.ndarray) -> int:
    """Episodes with a target whose content is also in their context."""
    arrays = episode_arrays(episodes, ("context", "target"))
    pairs = zip(arrays["context"], arrays["target"], strict=True)
    return sum(
        bool(set(keys[context[context >= 0]]) & set(keys[target[target >= 0]]))
        for context, target in pairs
    )


def test_the_check_finds_the_leak_that_duplicated_rows_make():
    """Rows of one user duplicated under new ids, as a loader without the content check would
    pass them on: episodes then do hold targets in their contexts."""
    from npalign.config import SyntheticConfig
    from npalign.data.episodes import sample_episodes
    from npalign.data.synthetic import make_synthetic

    train = make_synthetic(SyntheticConfig(num_pairs=60))["train"]
    twice = PairTable(
        np.concatenate([train.pair_id, train.pair_id + "-copy"]),
        *(np.concatenate([getattr(train, f)] * 2) for f in ("prompt_id",)),
        np.concatenate([train.features_a, train.features_b]),  # the copy swaps a and b
        np.concatenate([train.features_b, train.features_a]),
        *(np.concatenate([getattr(train, f)] * 2) for f in ("user", "user_type")),
        np.concatenate([train.choice, 1 - train.choice]),
    )
    episodes = sample_episodes(twice, 200, 5, 5, 20, seed=0)
    assert leaks(episodes, content_keys(twice)) > 100
