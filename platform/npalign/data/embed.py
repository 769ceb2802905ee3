"""Text → features with a frozen encoder, run by Ray Data over an actor pool, cached on disk.

`TextEncoder` is the per-actor callable: it loads the model once (on a GPU when the actor has
one) and embeds a batch of texts either through the model's own sentence-transformers pipeline
(MiniLM: mean pooling, then L2 normalisation, at most 256 tokens — what a client calling
`SentenceTransformer(...).encode` gets) or, for plain HF models, by pooling the last hidden states
by a masked mean or at the last real token (decoder LMs). `embed_texts` embeds only the keys not
already in the cache — parquet parts of (key, embedding) in a folder per encoder setting, where
the key is a hash of (prompt, response) — and writes the new ones as one more part, atomically.
`embed_pairs` turns text preference tables into the PairTables the reward models train on.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from npalign.config import EmbedConfig
from npalign.data.preferences import PairTable, PreferenceDataError
from npalign.data.text import text_id
from npalign.files import atomic_path, cache_dir
from npalign.pretrained import model_path

log = logging.getLogger(__name__)


def sentence_model(path: str, device: str):
    """A sentence-transformers model with its own modules (pooling, normalisation). A local folder
    without `modules.json` would silently get a plain mean-pooling pipeline: refused instead."""
    from sentence_transformers import SentenceTransformer

    if Path(path).is_dir() and not (Path(path) / "modules.json").exists():
        raise ValueError(
            f"{path} is not a sentence-transformers model (no modules.json): set "
            "data.embed.pooling to 'mean' (encoders) or 'last' (decoder LMs)"
        )
    return SentenceTransformer(path, device=device)


class TextEncoder:
    """Ray Data `map_batches` callable: {"key", "text"} batch → {"key", "embedding"} batch."""

    def __init__(self, model: str, pooling: str, max_length: int):
        import torch

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.pooling = pooling
        path = model_path(model)
        if pooling == "sentence-transformers":
            self.sentence_model = sentence_model(path, self.device)
            # The model's own limit (256 for MiniLM) unless the config asks for fewer tokens.
            limit = self.sentence_model.max_seq_length or max_length
            self.sentence_model.max_seq_length = min(max_length, limit)
            return
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token is None:  # decoder LMs often have none; padding is masked
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModel.from_pretrained(path).to(self.device).eval()
        self.max_length = min(max_length, self.tokenizer.model_max_length)

    def embed(self, texts: list[str]) -> np.ndarray:
        """(texts, hidden) float32."""
        if self.pooling == "sentence-transformers":
            return self.sentence_model.encode(
                texts, batch_size=len(texts), convert_to_numpy=True, show_progress_bar=False
            ).astype(np.float32)
        torch = self.torch
        batch = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state.float()  # (texts, tokens, hidden)
        mask = batch["attention_mask"]  # (texts, tokens)
        if self.pooling == "mean":
            weights = mask.unsqueeze(-1).float()
            pooled = (hidden * weights).sum(1) / weights.sum(1)
        else:
            # The last real token, whichever side the tokenizer pads on.
            positions = torch.arange(mask.shape[1], device=mask.device)
            last = (mask * positions).argmax(dim=1)
            pooled = hidden[torch.arange(len(texts), device=mask.device), last]
        return pooled.cpu().numpy()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"key": batch["key"], "embedding": self.embed(list(batch["text"]))}


def cache_folder(config: EmbedConfig) -> Path:
    """One folder per encoder setting: a change of model, pooling, length or prompt use never
    mixes embeddings."""
    setting = f"{config.model}|{config.pooling}|{config.max_length}|{config.include_prompt}"
    name = f"{Path(config.model).name}-{config.pooling}-{text_id(setting)[:8]}"
    root = Path(config.cache_dir) if config.cache_dir else cache_dir("embeddings")
    return root / name


def read_cache(folder: Path) -> dict[str, np.ndarray]:
    """key → embedding of every cache part; an unreadable part or a non-finite embedding is an
    error naming the file and row (delete the part to embed its texts again)."""
    cached: dict[str, np.ndarray] = {}
    for part in sorted(folder.glob("part-*.parquet")):
        try:
            table = pq.read_table(part)
        except (pa.ArrowInvalid, OSError) as e:
            raise PreferenceDataError(
                f"{part}: unreadable embedding cache part ({e}); delete it to embed again"
            ) from e
        embeddings = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
        bad = np.flatnonzero(~np.isfinite(embeddings).all(axis=1))
        if len(bad):
            raise PreferenceDataError(
                f"{part}: row {bad[0]}, column 'embedding': NaN or inf in a cached embedding "
                f"({len(bad)} rows); delete the file to embed its texts again"
            )
        cached.update(zip(table.column("key").to_pylist(), embeddings, strict=True))
    return cached


@dataclass
class EmbedStats:
    texts: int  # distinct keys asked for
    cached: int  # found in the cache
    embedded: int  # run through the encoder now
    seconds: float  # wall time of the Ray Data job (0 when everything was cached)

    @property
    def texts_per_s(self) -> float | None:
        return self.embedded / self.seconds if self.seconds else None


def embed_texts(
    texts: dict[str, str], config: EmbedConfig
) -> tuple[dict[str, np.ndarray], EmbedStats]:
    """key → embedding for every key in `texts`, embedding only what the cache lacks."""
    import ray

    folder = cache_folder(config)
    cached = read_cache(folder)
    missing = [k for k in texts if k not in cached]
    log.info(
        "embedding %d texts with %s: %d cached in %s, %d to embed",
        len(texts),
        config.model,
        len(texts) - len(missing),
        folder,
        len(missing),
    )
    seconds = 0.0
    if missing:
        # Longest first, so a batch holds texts of similar length (less padding) and the slow
        # batches start early.
        missing.sort(key=lambda k: -len(texts[k]))
        ray.data.DataContext.get_current().enable_progress_bars = True
        items = ray.data.from_items(  # joins or starts Ray on first use
            [{"key": k, "text": texts[k]} for k in missing],
            override_num_blocks=max(config.actors * 4, len(missing) // (config.batch_size * 8)),
        )
        gpus = ray.cluster_resources().get("GPU", 0) > 0
        dataset = items.map_batches(
            TextEncoder,
            fn_constructor_kwargs={
                "model": config.model,
                "pooling": config.pooling,
                "max_length": config.max_length,
            },
            batch_size=config.batch_size,
            compute=ray.data.ActorPoolStrategy(size=config.actors),
            num_cpus=config.cpus_per_actor,
            num_gpus=1 if gpus else 0,
        )
        start = time.perf_counter()
        parts = list(dataset.iter_batches(batch_size=None, batch_format="pyarrow"))
        seconds = time.perf_counter() - start
        new = pa.concat_tables(parts)
        keys = new.column("key").to_pylist()
        embeddings = np.stack(new.column("embedding").to_numpy(zero_copy_only=False))
        embeddings = embeddings.astype(np.float32)
        dim = embeddings.shape[1]
        table = pa.table(
            {
                "key": pa.array(keys, pa.string()),
                "embedding": pa.FixedSizeListArray.from_arrays(
                    pa.array(embeddings.reshape(-1), pa.float32()), dim
                ),
            }
        )
        with atomic_path(folder / f"part-{uuid.uuid4().hex[:12]}.parquet") as tmp:
            pq.write_table(table, tmp)
        cached.update(zip(keys, embeddings, strict=True))
        log.info(
            "embedded %d texts in %.1f s (%.1f texts/s)", len(keys), seconds, len(keys) / seconds
        )
    stats = EmbedStats(len(texts), len(texts) - len(missing), len(missing), seconds)
    return {k: cached[k] for k in texts}, stats


def embed_text(prompt: str, response: str, include_prompt: bool) -> str:
    """The text the encoder reads for one (prompt, response): the one recipe for training,
    serving and clients, so a context is embedded the same way everywhere."""
    return f"{prompt}\n\n{response}" if include_prompt else response


def pair_texts(table: pa.Table, include_prompt: bool) -> dict[str, str]:
    """key (hash of prompt and response) → the text the encoder reads, for both options."""
    out = {}
    columns = table.select(["prompt", "response_a", "response_b"]).to_pydict()
    for prompt, *answers in zip(*columns.values(), strict=True):
        for answer in answers:
            out[text_id(prompt, answer)] = embed_text(prompt, answer, include_prompt)
    return out


def embed_pairs(
    tables: dict[str, pa.Table], config: EmbedConfig
) -> tuple[dict[str, PairTable], EmbedStats]:
    """Text preference tables (per split) → PairTables whose features are the embeddings."""
    texts: dict[str, str] = {}
    for table in tables.values():
        texts.update(pair_texts(table, config.include_prompt))
    embeddings, stats = embed_texts(texts, config)
    out = {}
    for split, table in tables.items():
        d = table.to_pydict()
        keys_a = [text_id(p, a) for p, a in zip(d["prompt"], d["response_a"], strict=True)]
        keys_b = [text_id(p, b) for p, b in zip(d["prompt"], d["response_b"], strict=True)]
        out[split] = PairTable(
            pair_id=np.asarray(d["pair_id"], dtype=object),
            prompt_id=np.asarray(d["prompt_id"], dtype=object),
            features_a=np.stack([embeddings[k] for k in keys_a]).astype(np.float32),
            features_b=np.stack([embeddings[k] for k in keys_b]).astype(np.float32),
            user=np.asarray(d["user"], dtype=object),
            user_type=np.asarray(d["user_type"], dtype=object),
            choice=np.asarray(d["choice"], dtype=np.int8),
        )
    return out, stats
