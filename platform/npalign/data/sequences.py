"""Token sequences for the policy: each preference row's prompt (in the model's chat template) and
its two responses, and the DPO batch built from episodes.

A policy episode is a reward episode (`data/episodes.py`): the context pairs give z through the
context encoder (their *embeddings*, from the PairTable), the target pairs are scored by the
policy (their *tokens*, from here). Truncation, documented: a prompt longer than
`max_prompt_tokens` keeps its last tokens (the end of the template, where the answer starts); a
response longer than `max_response_tokens` keeps its first tokens and loses its end-of-turn token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields

import numpy as np
import pyarrow as pa
import torch

from npalign.data.episodes import EpisodeBatch, collate
from npalign.data.preferences import PairTable, PreferenceDataError
from npalign.data.text import PROMPT_MESSAGES


@dataclass
class TokenizedPairs:
    """Row-aligned with a split's PairTable: the tokens of each row's prompt and responses."""

    prompt: list[np.ndarray]  # int32 token ids, chat template and generation prompt included
    response_a: list[np.ndarray]  # ends with the end-of-turn token unless truncated
    response_b: list[np.ndarray]
    pad_id: int

    def select(self, rows: np.ndarray) -> TokenizedPairs:
        """The rows at an index array (as PairTable.select, to keep the two aligned)."""
        return TokenizedPairs(
            [self.prompt[i] for i in rows],
            [self.response_a[i] for i in rows],
            [self.response_b[i] for i in rows],
            self.pad_id,
        )


def prompt_tokens(
    tokenizer, prompt: str, messages: list[dict[str, str]] | None = None
) -> list[int]:
    """The prompt as a user turn of the model's chat template, ready for the answer; a
    multi-turn prompt (`messages`, the conversation so far) is templated turn by turn. A model
    without a template reads the text (`prompt`, the conversation flattened)."""
    if not prompt.strip():
        raise ValueError("empty prompt")
    if tokenizer.chat_template:
        return list(
            tokenizer.apply_chat_template(
                messages or [{"role": "user", "content": prompt}],
                add_generation_prompt=True,
                tokenize=True,
                return_dict=False,
            )
        )
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]


def tokenize_pairs(
    table: pa.Table,
    tokenizer,
    max_prompt_tokens: int,
    max_response_tokens: int,
    source: str = "<pairs>",
) -> TokenizedPairs:
    """Tokens for every row of a text preference table (prompt, response_a, response_b)."""
    end = tokenizer.eos_token_id
    columns = table.select(["prompt", "response_a", "response_b"]).to_pydict()
    messages = (
        table.column(PROMPT_MESSAGES).to_pylist() if PROMPT_MESSAGES in table.column_names else []
    )
    cache: dict[tuple[str, bool], np.ndarray] = {}

    def tokens(text: str, row: int, column: str) -> np.ndarray:
        conversation = messages[row] if column == "prompt" and messages else None
        key = (conversation or text, column == "prompt")
        if key not in cache:
            if not text.strip():
                raise PreferenceDataError(f"{source}: row {row}, column {column!r}: empty text")
            if column == "prompt":
                turns = json.loads(conversation) if conversation else None
                ids = prompt_tokens(tokenizer, text, turns)[-max_prompt_tokens:]
            else:
                ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [end]
                ids = ids[:max_response_tokens]
            cache[key] = np.asarray(ids, dtype=np.int32)
        return cache[key]

    out: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    for row, texts in enumerate(zip(*columns.values(), strict=True)):
        for column, text in zip(columns, texts, strict=True):
            out[column].append(tokens(text, row, column))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
    return TokenizedPairs(out["prompt"], out["response_a"], out["response_b"], pad)


@dataclass
class PolicyBatch:
    """Episodes for DPO: the context (embeddings → z) and every target pair as two sequences."""

    context: EpisodeBatch  # context_chosen/rejected/mask used; target_* unused
    input_ids: torch.Tensor  # (episodes · targets · 2, tokens): chosen then rejected per target
    attention_mask: torch.Tensor  # (sequences, tokens) 1 on real tokens (padding on the left)
    response_mask: torch.Tensor  # (sequences, tokens) 1 on the response's tokens
    response_width: int  # the longest response: responses fill at most the last this many

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> PolicyBatch:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        moved["context"] = self.context.to(device, dtype)
        for name in ("input_ids", "attention_mask", "response_mask"):
            moved[name] = moved[name].to(device, non_blocking=True)
        return PolicyBatch(**moved)


def collate_policy(
    episodes: dict[str, np.ndarray], pairs: PairTable, tokens: TokenizedPairs
) -> PolicyBatch:
    """Episode rows → context tensors and left-padded (prompt + response) sequences, ordered
    (episode, target, chosen/rejected)."""
    context = collate(episodes, pairs)
    target = np.asarray(episodes["target"])  # (episodes, targets), no padding
    sequences = []
    for row in target.reshape(-1):
        chosen, rejected = (
            (tokens.response_b[row], tokens.response_a[row])
            if pairs.choice[row]
            else (tokens.response_a[row], tokens.response_b[row])
        )
        for response in (chosen, rejected):
            sequences.append((tokens.prompt[row], response))
    # Left padding: every sequence ends at the last position, so the responses all lie in the
    # last `response_width` positions and the LM head needs to run there only.
    width = max(len(p) + len(r) for p, r in sequences)
    input_ids = torch.full((len(sequences), width), tokens.pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    response_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, (prompt, response) in enumerate(sequences):
        n, m = len(prompt), len(response)
        input_ids[i, width - n - m : width - m] = torch.from_numpy(prompt.astype(np.int64))
        input_ids[i, width - m :] = torch.from_numpy(response.astype(np.int64))
        attention[i, width - n - m :] = 1
        response_mask[i, width - m :] = 1
    return PolicyBatch(
        context=context,
        input_ids=input_ids,
        attention_mask=attention,
        response_mask=response_mask,
        response_width=max(len(r) for _, r in sequences),
    )
