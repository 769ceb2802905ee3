"""Which pair to ask a user next: the question whose answer is expected to tell most about them.

Given a trained NP-BTL, each user's context so far and a pool of candidate pairs, every candidate
gets a score and the best one not yet asked is the next question. Selectors (`QUESTION_SELECTORS`):

- "bald" (the default for a variational latent; needs one): the mutual information between the
  user's answer y and the latent z, I(y; z | C) = H(E_z p) − E_z H(p), with z sampled from
  q(z | C).
- "epig" (needs a variational latent): the expected information the answer y brings about the
  user's answers y' on the pair itself and on up to 64 other pairs of the pool (probes),
  I(y; y' | C) averaged over them, with both answers' joint law from z sampled from q(z | C):
  what tells most about the user's later answers rather than about z. On validation users of
  both question tasks BALD and EPIG cannot be told apart (benchmarks/RESULTS.md).
- "lookahead" (any latent; the default for a deterministic one, which has no spread to sample):
  the same EPIG with the NP's amortised posterior standing in for Bayes' rule: C ∪ {(pair, y)}
  goes through the context encoder for both answers, and y' is predicted by those two futures
  mixed by y's odds. On the steer question task its second question is worse than a random one
  (benchmarks/RESULTS.md): prefer a variational latent and bald where asking matters.
- "entropy": the predictive entropy H(p(y | C)) at z's mean: the pair the model is least sure
  about (a baseline; it cannot tell the user's randomness from its own ignorance).
- "random": uniform scores (the baseline of users who label whatever they are shown).

Everything is batched over users and candidates; higher scores are better, and a candidate that is
masked out (already asked, or padding) scores −inf.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from npalign.registry import QUESTION_SELECTORS

DEFAULT_SAMPLES = 64
DEFAULT_PROBES = 64


@dataclass
class Pool:
    """Per user, the context so far and the candidate pairs (features of both responses)."""

    context_chosen: torch.Tensor  # (users, m, dim)
    context_rejected: torch.Tensor  # (users, m, dim)
    context_mask: torch.Tensor  # (users, m) bool, False on padding
    candidate_a: torch.Tensor  # (users, candidates, dim)
    candidate_b: torch.Tensor  # (users, candidates, dim)
    available: torch.Tensor  # (users, candidates) bool: may be asked


Selector = Callable[[nn.Module, Pool, torch.Generator], torch.Tensor]


def default_selector(model: nn.Module) -> str:
    return "bald" if model.variational else "lookahead"


def _entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)
    return -(p * p.log() + (1 - p) * (1 - p).log())


def answer_probability(model: nn.Module, pool: Pool, z: torch.Tensor) -> torch.Tensor:
    """p(the user prefers b) for every candidate under each latent: z (users, samples, latent)
    → (users, samples, candidates)."""
    return torch.sigmoid(
        model.reward_samples(pool.candidate_b, z) - model.reward_samples(pool.candidate_a, z)
    )


def _require_variational(model: nn.Module, selector: str) -> None:
    if not model.variational:
        raise ValueError(
            f"{selector} samples z from q(z | context): it needs an NP-BTL with model.latent "
            "variational; use 'lookahead' for a deterministic latent"
        )


def _latent_samples(model: nn.Module, pool: Pool, generator: torch.Generator) -> torch.Tensor:
    """DEFAULT_SAMPLES draws of z from q(z | context) per user: (users, samples, latent)."""
    q = model.latent(pool.context_chosen, pool.context_rejected, pool.context_mask)
    noise = torch.randn(
        (q.mean.shape[0], DEFAULT_SAMPLES, q.mean.shape[1]), generator=generator
    ).to(q.mean)
    return q.mean[:, None] + q.std[:, None] * noise


def _probes(pool: Pool, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to DEFAULT_PROBES pool positions (the same for every user) whose answers a question
    should tell about, and (users, candidates, probes) 1.0 where a probe counts for a candidate:
    still unasked and not the candidate itself (whose own pair is counted once, apart)."""
    candidates = pool.candidate_a.shape[1]
    device = pool.candidate_a.device
    probes = torch.randperm(candidates, generator=generator)[:DEFAULT_PROBES].to(device)
    other = probes[None] != torch.arange(candidates, device=device)[:, None]  # (cand., probes)
    return probes, (pool.available[:, None, probes] & other[None]).float()


@QUESTION_SELECTORS.register("bald")
def bald(model: nn.Module, pool: Pool, generator: torch.Generator) -> torch.Tensor:
    _require_variational(model, "bald")
    p = answer_probability(model, pool, _latent_samples(model, pool, generator))
    return _entropy(p.mean(1)) - _entropy(p).mean(1)  # p: (users, samples, candidates)


def _joint_information(both: torch.Tensor, here: torch.Tensor, there: torch.Tensor) -> torch.Tensor:
    """I(y; y') of two binary answers from p(y = y' = b), p(y = b) and p(y' = b)."""
    cells = [
        (both, here, there),
        (here - both, here, 1 - there),
        (there - both, 1 - here, there),
        (1 - here - there + both, 1 - here, 1 - there),
    ]
    return sum(
        joint.clamp(min=1e-9) * (joint.clamp(min=1e-9) / (a * b).clamp(min=1e-9)).log()
        for joint, a, b in cells
    )


@QUESTION_SELECTORS.register("epig")
def epig(model: nn.Module, pool: Pool, generator: torch.Generator) -> torch.Tensor:
    _require_variational(model, "epig")
    p = answer_probability(model, pool, _latent_samples(model, pool, generator))
    samples, marginal = p.shape[1], p.mean(1)  # p: (users, samples, candidates)
    probes, valid = _probes(pool, generator)
    # Answers are independent given z: their joint law is the mean over z of the product.
    both = torch.einsum("usc,usp->ucp", p, p[:, :, probes]) / samples
    on_probes = _joint_information(both, marginal[..., None], marginal[:, None, probes])
    # The pair itself counts once too, as a later answer to it (as in lookahead).
    itself = _joint_information((p * p).mean(1), marginal, marginal)
    return ((on_probes * valid).sum(-1) + itself) / (valid.sum(-1) + 1)


@QUESTION_SELECTORS.register("lookahead")
def lookahead(model: nn.Module, pool: Pool, generator: torch.Generator) -> torch.Tensor:
    users, candidates, dim = pool.candidate_a.shape
    device = pool.candidate_a.device
    now = model.latent(pool.context_chosen, pool.context_rejected, pool.context_mask).mean
    p_b = answer_probability(model, pool, now[:, None])[:, 0]  # (users, candidates)

    # Each candidate's own pair is left out of its probes and counted once on its own.
    probes, valid = _probes(pool, generator)
    probe_pool = Pool(
        pool.context_chosen,
        pool.context_rejected,
        pool.context_mask,
        pool.candidate_a[:, probes],
        pool.candidate_b[:, probes],
        pool.available[:, probes],
    )
    m = pool.context_chosen.shape[1]

    def grown(context: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        context = context[:, None].expand(-1, candidates, -1, -1)
        return torch.cat([context, new[:, :, None]], dim=2).reshape(-1, m + 1, dim)

    mask = torch.cat(
        [
            pool.context_mask[:, None].expand(-1, candidates, -1),
            torch.ones(users, candidates, 1, dtype=torch.bool, device=device),
        ],
        dim=2,
    ).reshape(-1, m + 1)

    def after(answer_b: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """p(b) once each candidate is answered this way: on the probes (users, cand., probes)
        and on the pair itself (users, cand.)."""
        chosen = pool.candidate_b if answer_b else pool.candidate_a
        rejected = pool.candidate_a if answer_b else pool.candidate_b
        z = model.latent(
            grown(pool.context_chosen, chosen), grown(pool.context_rejected, rejected), mask
        ).mean.reshape(users, candidates, -1)
        r_a = model.reward(pool.candidate_a.reshape(-1, 1, dim), z.reshape(users * candidates, -1))
        r_b = model.reward(pool.candidate_b.reshape(-1, 1, dim), z.reshape(users * candidates, -1))
        itself = torch.sigmoid(r_b - r_a).reshape(users, candidates)
        return answer_probability(model, probe_pool, z), itself

    def information(if_a: torch.Tensor, if_b: torch.Tensor, weight_b: torch.Tensor):
        """I(answer; later answer) when the answer is b with probability weight_b."""
        mixed = (1 - weight_b) * if_a + weight_b * if_b
        return _joint_information(weight_b * if_b, weight_b, mixed)

    # The later answers are predicted by the two futures mixed by the answer's odds, not by the
    # model's prediction now: the amortised posterior is no Bayes update, so the two differ, and
    # against the prediction now an answer thought unlikely that throws z far would score without
    # bound. Against the mixture the score is a mutual information: at most log 2 per pair.
    (probes_a, itself_a), (probes_b, itself_b) = after(False), after(True)
    on_probes = information(probes_a, probes_b, p_b[..., None])  # (users, candidates, probes)
    itself = information(itself_a, itself_b, p_b)
    return ((on_probes * valid).sum(-1) + itself) / (valid.sum(-1) + 1)


@QUESTION_SELECTORS.register("entropy")
def entropy(model: nn.Module, pool: Pool, generator: torch.Generator) -> torch.Tensor:
    z = model.latent(pool.context_chosen, pool.context_rejected, pool.context_mask).mean
    return _entropy(answer_probability(model, pool, z[:, None])[:, 0])


@QUESTION_SELECTORS.register("random")
def random(model: nn.Module, pool: Pool, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(pool.available.shape, generator=generator).to(pool.available.device)


@torch.no_grad()
def question_scores(
    model: nn.Module, pool: Pool, selector: str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(users, candidates) expected information of each candidate (−inf where not available)."""
    if not getattr(model, "uses_context", False):
        raise ValueError(
            f"choosing questions needs a reward model that reads the context (NP-BTL), not "
            f"{type(model).__name__}"
        )
    model.eval()
    generator = generator or torch.Generator().manual_seed(0)
    scores = QUESTION_SELECTORS[selector](model, pool, generator).float()
    return scores.masked_fill(~pool.available, float("-inf"))


def next_questions(
    model: nn.Module, pool: Pool, selector: str, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per user, the index of the candidate to ask next and its score: (users,), (users,). A
    user with nothing available gets index −1."""
    scores = question_scores(model, pool, selector, generator)
    best, index = scores.max(dim=1)
    return torch.where(pool.available.any(1), index, -1), best
