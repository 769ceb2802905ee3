"""The embedding pipeline: the model's own sentence-transformers pipeline or pooling, Ray Data
actor pool, the hash-keyed cache."""

import numpy as np
import pyarrow as pa
import pytest

from npalign.config import EmbedConfig
from npalign.data.embed import TextEncoder, cache_folder, embed_pairs, embed_texts, pair_texts
from npalign.data.text import text_id


@pytest.fixture(scope="module")
def minilm():
    return TextEncoder("minilm", "mean", 512)


def test_padding_never_changes_an_embedding(minilm):
    short, long = "A short answer.", "A much longer answer " * 20
    for pooling in ("mean", "last"):
        minilm.pooling = pooling
        alone = minilm.embed([short])
        padded = minilm.embed([short, long])  # `short` is padded to the length of `long`
        np.testing.assert_allclose(padded[0], alone[0], atol=1e-5)
    minilm.pooling = "mean"


def test_mean_pooling_is_the_masked_mean_of_hidden_states(minilm):
    import torch

    tokens = minilm.tokenizer(["The cat sat."], return_tensors="pt")
    with torch.inference_mode():
        hidden = minilm.model(**tokens).last_hidden_state[0]
    np.testing.assert_allclose(minilm.embed(["The cat sat."])[0], hidden.mean(0), atol=1e-5)


def test_minilm_embeds_as_a_client_calling_sentence_transformers_does():
    """The README's client recipe (its own SentenceTransformer, the same text) gives the features
    the models were trained on: normalised, equal to the training encoder's."""
    from sentence_transformers import SentenceTransformer

    from npalign.data.embed import embed_text
    from npalign.pretrained import model_path

    prompt, responses = "Any news?", ["Rain.", "Heavy rain fell across the state today. " * 60]
    ours = TextEncoder("minilm", "sentence-transformers", 512).embed(
        [embed_text(prompt, r, include_prompt=True) for r in responses]
    )
    client = SentenceTransformer(model_path("minilm"), device="cpu")
    theirs = client.encode([f"{prompt}\n\n{r}" for r in responses])
    np.testing.assert_allclose(ours, theirs, atol=1e-5)  # the long text is cut at 256 tokens
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_a_plain_folder_is_not_taken_for_a_sentence_transformers_model(tmp_path):
    with pytest.raises(ValueError, match="no modules.json.*pooling"):
        TextEncoder(str(tmp_path), "sentence-transformers", 512)


def test_cache_folder_depends_on_the_encoder_setting(tmp_path):
    base = EmbedConfig(cache_dir=str(tmp_path))
    assert cache_folder(base) == cache_folder(base.model_copy(update={"actors": 2}))
    assert cache_folder(base) != cache_folder(base.model_copy(update={"pooling": "mean"}))
    assert cache_folder(base) != cache_folder(base.model_copy(update={"include_prompt": False}))


@pytest.mark.ray
def test_ray_data_job_embeds_only_what_is_not_cached(ray_cluster, tmp_path):
    config = EmbedConfig(cache_dir=str(tmp_path), batch_size=2)
    texts = {f"k{i}": f"answer number {i} about the weather" for i in range(5)}
    first, stats = embed_texts(texts, config)
    assert (stats.embedded, stats.cached) == (5, 0)
    assert len(list(cache_folder(config).glob("part-*.parquet"))) == 1
    again, stats = embed_texts({**texts, "new": "one more answer"}, config)
    assert (stats.embedded, stats.cached) == (1, 5)
    for key in texts:
        np.testing.assert_array_equal(again[key], first[key])
    expected = TextEncoder("minilm", "sentence-transformers", 512).embed([texts["k3"]])[0]
    np.testing.assert_allclose(first["k3"], expected, atol=1e-4)

    table = pa.Table.from_pylist(
        [
            {
                "pair_id": "p",
                "prompt_id": "q",
                "prompt": "Q?",
                "response_a": "yes",
                "response_b": "no",
                "user": "u",
                "user_type": "t",
                "choice": 1,
            }
        ]
    )
    pairs, _ = embed_pairs({"train": table}, config)
    assert pairs["train"].features_a.shape == (1, 384)
    keys = pair_texts(table, include_prompt=True)
    assert keys[text_id("Q?", "yes")] == "Q?\n\nyes"
    assert not np.allclose(pairs["train"].features_a, pairs["train"].features_b)


def test_decoder_lm_with_last_token_pooling():
    import torch

    encoder = TextEncoder("smollm2", "last", 64)  # the packaged decoder, converted once
    texts = ["Short.", "A somewhat longer text that needs more tokens than the first."]
    both = encoder.embed(texts)
    assert both.shape == (2, encoder.model.config.hidden_size)
    tokens = encoder.tokenizer(texts[:1], return_tensors="pt")
    with torch.inference_mode():
        hidden = encoder.model(**tokens).last_hidden_state[0, -1]
    np.testing.assert_allclose(both[0], hidden.numpy(), atol=1e-4)  # padding changed nothing


def test_a_nan_or_a_truncated_file_in_the_embedding_cache_is_named(tmp_path):
    import re

    import pyarrow.parquet as pq

    from npalign.data.embed import read_cache
    from npalign.data.preferences import PreferenceDataError

    vectors = np.ones((3, 4), np.float32)
    vectors[2, 1] = np.nan
    part = tmp_path / "part-0.parquet"
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), 4)
    pq.write_table(pa.table({"key": ["a", "b", "c"], "embedding": column}), part)
    with pytest.raises(PreferenceDataError, match=re.escape(f"{part}: row 2, column 'embedding'")):
        read_cache(tmp_path)
    part.write_bytes(part.read_bytes()[:40])
    with pytest.raises(PreferenceDataError, match=f"{part}: unreadable"):
        read_cache(tmp_path)
