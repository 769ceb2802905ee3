"""DPO sequences built from hand-made prompts and responses (`data/sequences.py`), checked token by
token: the chat template, truncation, chosen before rejected by the user's choice, left padding,
the attention and response masks, and sequence log-probs equal to sums written out by hand."""

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from npalign.data.preferences import PairTable, PreferenceDataError
from npalign.data.sequences import collate_policy, prompt_tokens, tokenize_pairs
from npalign.models.policy import sequence_logprobs

WORDS = ["<pad>", "<eos>", "<bos>", "user", "assistant", "what", "happened", "fire", "rain"]
WORDS += ["a", "big", "fire.", "rain.", "fell", "today."]
ID = {w: i for i, w in enumerate(WORDS)}
PAD, EOS = ID["<pad>"], ID["<eos>"]


def word_tokenizer():
    """One id per whitespace-separated word, and a chat template that wraps the user turn."""
    core = Tokenizer(models.WordLevel(ID, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>"
    )
    tokenizer.chat_template = (
        "{% for m in messages %}<bos> {{ m['role'] }} {{ m['content'] }} <eos> {% endfor %}"
        "{% if add_generation_prompt %}assistant{% endif %}"
    )
    return tokenizer


def ids(text: str) -> list[int]:
    return [ID[w] for w in text.split()]


def text_table(rows):
    return pa.table(
        {
            "prompt": [r[0] for r in rows],
            "response_a": [r[1] for r in rows],
            "response_b": [r[2] for r in rows],
        }
    )


ROWS = [("what happened", "fire.", "a big fire. today."), ("rain", "rain. fell today.", "rain.")]


def test_prompts_go_through_the_chat_template_and_responses_end_with_eos():
    tokenizer = word_tokenizer()
    assert prompt_tokens(tokenizer, "what happened") == ids(
        "<bos> user what happened <eos> assistant"
    )
    tokens = tokenize_pairs(text_table(ROWS), tokenizer, 16, 16)
    assert tokens.prompt[0].tolist() == ids("<bos> user what happened <eos> assistant")
    assert tokens.response_a[0].tolist() == ids("fire. <eos>")
    assert tokens.response_b[0].tolist() == ids("a big fire. today. <eos>")
    assert tokens.response_a[1].tolist() == ids("rain. fell today. <eos>")
    assert tokens.pad_id == PAD


def test_a_multi_turn_prompt_is_templated_turn_by_turn():
    turns = [
        {"role": "user", "content": "what happened"},
        {"role": "assistant", "content": "a big fire."},
        {"role": "user", "content": "rain"},
    ]
    table = text_table(ROWS).append_column("prompt_messages", pa.array([json.dumps(turns), None]))
    tokens = tokenize_pairs(table, word_tokenizer(), 32, 16)
    assert tokens.prompt[0].tolist() == ids(
        "<bos> user what happened <eos> <bos> assistant a big fire. <eos> <bos> user rain <eos> "
        "assistant"
    )
    assert tokens.prompt[1].tolist() == ids("<bos> user rain <eos> assistant")


def test_truncation_keeps_the_prompts_end_and_the_responses_start():
    tokens = tokenize_pairs(text_table(ROWS), word_tokenizer(), 3, 2)
    assert tokens.prompt[0].tolist() == ids("happened <eos> assistant")
    assert tokens.response_b[0].tolist() == ids("a big")  # cut: its <eos> is lost too


def test_an_empty_text_names_its_row_and_column():
    rows = [ROWS[0], ("rain", "  ", "rain.")]
    with pytest.raises(PreferenceDataError, match=r"train split: row 1, column 'response_a'"):
        tokenize_pairs(text_table(rows), word_tokenizer(), 16, 16, "train split")


def pairs_for(choices):
    rows = len(choices)
    return PairTable(
        pair_id=np.array([f"p{i}" for i in range(rows)], dtype=object),
        prompt_id=np.array([f"x{i}" for i in range(rows)], dtype=object),
        features_a=np.zeros((rows, 2), np.float32),
        features_b=np.ones((rows, 2), np.float32),
        user=np.array(["u"] * rows, dtype=object),
        user_type=np.array(["t"] * rows, dtype=object),
        choice=np.array(choices, dtype=np.int8),
    )


def test_sequences_are_chosen_then_rejected_left_padded_with_exact_masks():
    tokens = tokenize_pairs(text_table(ROWS), word_tokenizer(), 16, 16)
    # One episode, two targets: row 0 where the user chose b, row 1 where they chose a.
    episodes = {"context": np.array([[-1]]), "target": np.array([[0, 1]])}
    batch = collate_policy(episodes, pairs_for([1, 0]), tokens)
    prompt0, prompt1 = (
        ids("<bos> user what happened <eos> assistant"),
        ids("<bos> user rain <eos> assistant"),
    )
    expected = [  # (prompt, response) per sequence, in order
        (prompt0, ids("a big fire. today. <eos>")),  # row 0 chosen = b
        (prompt0, ids("fire. <eos>")),  # row 0 rejected = a
        (prompt1, ids("rain. fell today. <eos>")),  # row 1 chosen = a
        (prompt1, ids("rain. <eos>")),  # row 1 rejected = b
    ]
    width = max(len(p) + len(r) for p, r in expected)
    assert batch.input_ids.shape == (4, width)
    assert batch.response_width == max(len(r) for _, r in expected)
    for row, (prompt, response) in enumerate(expected):
        pad = width - len(prompt) - len(response)
        assert batch.input_ids[row].tolist() == [PAD] * pad + prompt + response
        assert batch.attention_mask[row].tolist() == [0] * pad + [1] * (len(prompt) + len(response))
        assert batch.response_mask[row].tolist() == [0] * (width - len(response)) + [1] * len(
            response
        )


def test_sequence_logprobs_equal_the_sum_written_out_by_hand():
    tokens = tokenize_pairs(text_table(ROWS), word_tokenizer(), 16, 16)
    episodes = {"context": np.array([[-1]]), "target": np.array([[0, 1]])}
    batch = collate_policy(episodes, pairs_for([1, 0]), tokens)
    torch.manual_seed(0)
    logits = torch.randn(*batch.input_ids.shape, len(WORDS))
    got = sequence_logprobs(logits, batch.input_ids, batch.response_mask)
    for row in range(4):
        by_hand = 0.0
        for t in range(1, batch.input_ids.shape[1]):
            if batch.response_mask[row, t]:
                # token t is predicted by the logits at t − 1
                column = logits[row, t - 1]
                by_hand += (column[batch.input_ids[row, t]] - torch.logsumexp(column, 0)).item()
        assert got[row].item() == pytest.approx(by_hand, abs=1e-4)
