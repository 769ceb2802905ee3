"""Inference for users: a user's few choices → z → responses with FiLM(z) in every block, or
NP-BTL rewards of candidate responses.

Each row of a batch carries its own z, so different users share one `generate` call. A user's
context is given as text (embedded here with the encoder the policy was trained with) or as
embeddings already computed (e.g. stored by a server).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from npalign.active import Pool, default_selector, next_questions
from npalign.config import DecodingConfig
from npalign.data.embed import TextEncoder, embed_text
from npalign.data.sequences import prompt_tokens
from npalign.models.policy import PolicyCheckpoint, device_of


@dataclass
class Choice:
    """One labelled pair of a user: for `prompt` they preferred `chosen` over `rejected`."""

    prompt: str
    chosen: str
    rejected: str


@dataclass
class ContextEmbeddings:
    chosen: np.ndarray  # (m, dim)
    rejected: np.ndarray  # (m, dim)


@functools.lru_cache(maxsize=2)
def context_encoder(model: str, pooling: str, max_length: int) -> TextEncoder:
    """The frozen text encoder, loaded once per process and setting, not once per call."""
    return TextEncoder(model, pooling, max_length)


def embed_choices(
    checkpoint: PolicyCheckpoint, users: list[list[Choice]]
) -> list[ContextEmbeddings]:
    """Text contexts → embeddings with the encoder setting the policy was trained with."""
    setting = checkpoint.embed
    encoder = context_encoder(setting.model, setting.pooling, setting.max_length)
    out = []
    for choices in users:
        if not choices:
            dim = checkpoint.feature_dim
            out.append(
                ContextEmbeddings(np.zeros((0, dim), np.float32), np.zeros((0, dim), np.float32))
            )
            continue
        chosen = [embed_text(c.prompt, c.chosen, setting.include_prompt) for c in choices]
        rejected = [embed_text(c.prompt, c.rejected, setting.include_prompt) for c in choices]
        out.append(ContextEmbeddings(encoder.embed(chosen), encoder.embed(rejected)))
    return out


def embed_responses(checkpoint: PolicyCheckpoint, prompt: str, responses: list[str]) -> np.ndarray:
    """Candidate responses to `prompt` → (responses, dim) features, in the same setting as the
    context pairs (what a reward model trained on that setting scores)."""
    setting = checkpoint.embed
    encoder = context_encoder(setting.model, setting.pooling, setting.max_length)
    return encoder.embed([embed_text(prompt, r, setting.include_prompt) for r in responses])


def check_reward_model(reward: nn.Module, feature_dim: int, source: str) -> None:
    """`reward` can score for a user (`user_rewards`): it reads a context, on `feature_dim`
    features (the policy's embedding setting)."""
    if not reward.uses_context or reward.feature_dim != feature_dim:
        raise ValueError(
            f"{source}: scoring for a user needs a reward model that reads the context (NP-BTL) "
            f"trained on {feature_dim} features; found {type(reward).__name__} on "
            f"{reward.feature_dim}"
        )


@torch.no_grad()
def user_rewards(reward: nn.Module, context: ContextEmbeddings, options: np.ndarray) -> np.ndarray:
    """r(x, y, z) of each candidate (options: (n, dim) features) for the user whose context
    gives z; higher is preferred by that user. (n,)"""
    device = device_of(reward)
    mask = torch.ones(1, len(context.chosen), dtype=torch.bool, device=device)
    chosen, rejected, options = (
        torch.as_tensor(e, device=device)[None] for e in (context.chosen, context.rejected, options)
    )
    z = reward.latent(chosen, rejected, mask).mean
    return reward.reward(options, z)[0].cpu().numpy()


@dataclass
class Candidate:
    """A pair that could be put to a user: "for `prompt`, which of the two do you prefer?"."""

    prompt: str
    response_a: str
    response_b: str


def embed_candidates(
    checkpoint: PolicyCheckpoint, candidates: list[Candidate]
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs → (features of response a (n, dim), of response b (n, dim)), in the
    policy's embedding setting."""
    setting = checkpoint.embed
    encoder = context_encoder(setting.model, setting.pooling, setting.max_length)
    texts = [
        embed_text(c.prompt, response, setting.include_prompt)
        for c in candidates
        for response in (c.response_a, c.response_b)
    ]
    chunk = 128  # texts per encoder call: a large pool is embedded a batch at a time
    parts = [encoder.embed(texts[i : i + chunk]) for i in range(0, len(texts), chunk)]
    both = np.concatenate(parts).reshape(len(candidates), 2, -1)
    return both[:, 0], both[:, 1]


def in_context(
    context: ContextEmbeddings, a: np.ndarray, b: np.ndarray, tolerance: float = 1e-4
) -> np.ndarray:
    """Which candidates (a, b: (n, dim)) the user has answered already, in either order: their
    embeddings equal a context pair's (the store keeps embeddings, not texts). (n,) bool"""
    if not len(context.chosen):
        return np.zeros(len(a), dtype=bool)
    asked = np.concatenate([context.chosen, context.rejected], axis=1)  # (m, 2 dim)
    found = np.zeros(len(a), dtype=bool)
    for pair in (np.concatenate([a, b], axis=1), np.concatenate([b, a], axis=1)):
        distance = np.abs(pair[:, None] - asked[None]).max(-1)  # (n, m)
        found |= (distance <= tolerance).any(1)
    return found


@torch.no_grad()
def next_question(
    reward: nn.Module,
    context: ContextEmbeddings,
    a: np.ndarray,
    b: np.ndarray,
    selector: str | None = None,
    seed: int = 0,
    answered: ContextEmbeddings | None = None,
) -> tuple[int | None, float, str]:
    """The candidate (a, b: (n, dim)) whose answer is expected to tell most about the user whose
    choices so far are `context`, by an NP-BTL (`active.py`): (its index, or None when every
    candidate is answered already; the expected information; the selector used). `answered`:
    every pair the user has answered, when the model reads only their latest (`context`)."""
    selector = selector or default_selector(reward)
    available = torch.as_tensor(~in_context(answered or context, a, b))[None]
    device = device_of(reward)
    pool = Pool(
        *(t.to(device) for t in padded_contexts([context], a.shape[1])),
        torch.as_tensor(a, device=device)[None],
        torch.as_tensor(b, device=device)[None],
        available.to(device),
    )
    index, score = next_questions(reward, pool, selector, torch.Generator().manual_seed(seed))
    found = int(index[0])
    return (found if found >= 0 else None), float(score[0]), selector


@torch.no_grad()
def user_latents(checkpoint: PolicyCheckpoint, contexts: list[ContextEmbeddings]) -> torch.Tensor:
    """One z per user (batch, latent); an empty context gives z = 0 (base + LoRA)."""
    dim = checkpoint.feature_dim
    for i, c in enumerate(contexts):
        for name, e in (("chosen", c.chosen), ("rejected", c.rejected)):
            if e.ndim != 2 or e.shape[1] != dim:
                raise ValueError(
                    f"context {i}: {name} embeddings have shape {tuple(e.shape)}; the policy's "
                    f"context encoder expects (pairs, {dim})"
                )
        if len(c.chosen) != len(c.rejected):
            raise ValueError(
                f"context {i}: {len(c.chosen)} chosen but {len(c.rejected)} rejected embeddings"
            )
    padded = (t.to(checkpoint.device) for t in padded_contexts(contexts, dim))
    return checkpoint.policy.latent(*padded)


def padded_contexts(
    contexts: list[ContextEmbeddings], dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Users' contexts as the context encoder reads them: chosen, rejected (users, width, dim)
    and the mask (users, width), False on padding; width ≥ 1 even when every context is empty."""
    width = max(1, max(len(c.chosen) for c in contexts))
    chosen = torch.zeros(len(contexts), width, dim)
    rejected = torch.zeros(len(contexts), width, dim)
    mask = torch.zeros(len(contexts), width, dtype=torch.bool)
    for i, c in enumerate(contexts):
        m = len(c.chosen)
        chosen[i, :m] = torch.as_tensor(c.chosen, dtype=torch.float32)
        rejected[i, :m] = torch.as_tensor(c.rejected, dtype=torch.float32)
        mask[i, :m] = True
    return chosen, rejected, mask


class AnswerOnly:
    """An HF logits processor that sees only the tokens generated so far: every row is
    left-padded to `prompt_width`, so the answer starts there in all of them."""

    def __init__(self, inner, prompt_width: int):
        self.inner, self.prompt_width = inner, prompt_width

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return self.inner(input_ids[:, self.prompt_width :], scores)


class WordRunLimit:
    """An HF logits processor that bans a word token from coming `longest` + 1 times in a row
    (`words`: (vocab,) bool, the tokens that hold a letter)."""

    def __init__(self, longest: int, words: torch.Tensor):
        self.longest, self.words = longest, words

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] < self.longest:
            return scores
        if self.words.device != scores.device:
            self.words = self.words.to(scores.device)
        last = input_ids[:, -self.longest :]
        token = last[:, -1:]  # (rows, 1)
        # A model's vocabulary can be padded past its tokenizer's: those tokens are no words.
        known = token < len(self.words)
        is_word = self.words[token.clamp(max=len(self.words) - 1)] & known
        banned = (last == token).all(1, keepdim=True) & is_word
        # Added where banned, on device: no boolean indexing, which waits for the GPU.
        return scores.scatter_add(1, token, torch.where(banned, -torch.inf, 0.0).to(scores.dtype))


def answer_guards(
    decoding: DecodingConfig, prompt_width: int, words: Callable[[], torch.Tensor]
) -> list[AnswerOnly]:
    """`decoding`'s loop guards, applied to the answer alone (HF generate's `logits_processor`);
    `words()`: (vocab,) bool, the tokens that hold a letter (`PolicyCheckpoint.word_tokens`),
    asked for only when the word-run guard is on."""
    from transformers import NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

    guards = []
    if decoding.repetition_penalty != 1.0:
        penalty = RepetitionPenaltyLogitsProcessor(float(decoding.repetition_penalty))
        guards.append(AnswerOnly(penalty, prompt_width))
    if decoding.no_repeat_ngram_size:
        ngrams = NoRepeatNGramLogitsProcessor(decoding.no_repeat_ngram_size)
        guards.append(AnswerOnly(ngrams, prompt_width))
    if decoding.max_word_run:
        guards.append(AnswerOnly(WordRunLimit(decoding.max_word_run, words()), prompt_width))
    return guards


@torch.no_grad()
def generate(
    checkpoint: PolicyCheckpoint,
    prompts: list[str],
    z: torch.Tensor | None,
    max_new_tokens: int | list[int] = 128,
    do_sample: bool = False,
    temperature: float = 1.0,
    decoding: DecodingConfig | None = None,
) -> list[str]:
    """One response per prompt, row i conditioned on z[i] (None: no FiLM, the plain policy),
    decoded as `decoding` says (default: the checkpoint's). `max_new_tokens` may differ per row
    (a server batching requests): the batch generates up to the largest and each row keeps its
    own first tokens, which are what it alone would get."""
    tokenizer, policy = checkpoint.tokenizer, checkpoint.policy
    if z is not None and len(z) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(z)} latents: one z per prompt")
    limits = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
    positions = policy.lm.config.max_position_embeddings
    rows = []
    for i, (prompt, new) in enumerate(zip(prompts, limits, strict=True)):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt {i} is empty")
        ids = prompt_tokens(tokenizer, prompt)
        if len(ids) + new > positions:
            raise ValueError(
                f"prompt {i}: {len(ids)} tokens + max_new_tokens {new} exceed the "
                f"model's limit of {positions} positions"
            )
        rows.append(ids)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    device = checkpoint.device
    input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    attention = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    sampling = (
        {"do_sample": True, "temperature": temperature} if do_sample else {"do_sample": False}
    )
    decoding = decoding or checkpoint.decoding
    out = policy.generate(
        input_ids,
        attention,
        None if z is None else z.to(device),
        max_new_tokens=max(limits),
        pad_token_id=pad,
        # HF's own guards off, whatever the base model's generation_config sets: they would
        # count the prompt too.
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        logits_processor=answer_guards(decoding, width, lambda: checkpoint.word_tokens),
        **sampling,
    )
    return [
        tokenizer.decode(row[width : width + new], skip_special_tokens=True).strip()
        for row, new in zip(out, limits, strict=True)
    ]
