"""NP-DPO steerable policy: a causal LM with LoRA and a FiLM layer after every transformer block,
conditioned per batch row on a user's latent z from the context encoder.

    h_l ← γ_l(z) ⊙ h_l + β_l(z),   γ_l(z) = 1 + W_l z,   β_l(z) = V_l z     after block l

z is measured from the training users' mean latent, z = (μ(C) − c) / s, z = 0 with no context,
and the maps have no bias, so FiLM is exactly the identity with no context (and at
initialisation, W = V = 0): a user nobody knows anything about gets base + LoRA alone, the part
every user's episodes train, and context moves the policy away from there. A bias, or an
uncentred z, would be a user-blind shift, which is LoRA's job. LoRA itself can still lean to one
user type unless training also holds episodes without context (`data.empty_context_share`).
The centre c (`policy.latent_centre`) and the scale s (`policy.latent_scale`) are measured from
the NP-BTL encoder z starts from: c the mean μ(C) over training users with a full context, s
their root mean square distance from it, so such a user's z is about 1 in norm whichever
encoder z comes from (under Adam a FiLM step moves W by about the learning rate, so W z moves
with |z|, and NP-BTL encoders trained longer give latents twice as large). Measured from the
empty context's μ(∅) instead, every user shares a "has choices" part, and users who disagree
can sit on one side of z = 0; a fresh encoder (no NP-BTL) falls back to μ(∅) and s = 1.

The reference policy π_ref of DPO is the same network with LoRA and FiLM switched off (no copy of
the weights). The preference loss (DPO, or APO-zero where the policy reads a context) compares
sequence log-probs summed over the response tokens only; an optional term `sft_weight ·
NLL(chosen)` per token (TRL's `sft` loss type) keeps the conditioned policy writing text: pure
DPO can raise the margin by making *both* responses unlikely, which for a user who wants short
answers ends in word salad. With `policy.per_token` the loss reads log-ratios averaged over each
response's tokens instead (`preference_metrics`), and evaluation's implicit reward with it.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from npalign.config import DecodingConfig, EmbedConfig, PolicyConfig
from npalign.data.sequences import PolicyBatch
from npalign.files import Location, atomic_path, write_json
from npalign.models.context import ContextEncoder
from npalign.registry import POLICY_MODELS, PREFERENCE_LOSSES


class FiLM(nn.Module):
    """(1 + W z) ⊙ h + V z: linear in z without bias, so the identity at z = 0 (no context) and
    at initialisation (W = V = 0)."""

    def __init__(self, latent_dim: int, width: int):
        super().__init__()
        self.gamma = nn.Linear(latent_dim, width, bias=False)
        self.beta = nn.Linear(latent_dim, width, bias=False)
        nn.init.zeros_(self.gamma.weight)
        nn.init.zeros_(self.beta.weight)

    def forward(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """h: (batch, tokens, width), z: (batch, latent); each row scaled by its own z. The maps
        run in their weights' dtype (a bfloat16 LM may carry float32 FiLM weights)."""
        z = z.to(self.gamma.weight.dtype)
        gamma, beta = (self.gamma(z).to(h.dtype), self.beta(z).to(h.dtype))
        return (1 + gamma)[:, None, :] * h + beta[:, None, :]


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of any HF causal LM (Llama's `model.layers`, GPT-2's
    `transformer.h`, ...): the ModuleList as long as the config's number of layers."""
    count = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"{type(model).__name__}: no list of {count} transformer blocks found")


@dataclass
class LoraSettings:
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] | str = ("q_proj", "v_proj")  # or "all-linear"


@dataclass
class PolicyOutput:
    logprobs: torch.Tensor  # (episodes, targets, 2) log π(y | x, z), chosen then rejected
    reference: torch.Tensor  # (episodes, targets, 2) log π_ref(y | x)
    lengths: torch.Tensor  # (episodes, targets, 2) response tokens


class SteerablePolicy(nn.Module):
    """LM + LoRA + FiLM + context encoder. z is set per call (`logits`, `generate`) or with
    `conditioned(z)`; with z None, or inside `reference()`, the FiLM layers are skipped."""

    def __init__(
        self,
        lm: nn.Module,
        encoder: ContextEncoder,
        latent_dim: int,
        lora: LoraSettings | None = None,
        latent_scale: float = 1.0,
        latent_centre: torch.Tensor | None = None,
    ):
        super().__init__()
        from peft import LoraConfig, get_peft_model

        lora = lora or LoraSettings()
        for p in lm.parameters():
            p.requires_grad_(False)
        self.lm = get_peft_model(
            lm,
            LoraConfig(
                r=lora.rank,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=(
                    lora.target_modules
                    if isinstance(lora.target_modules, str)
                    else list(lora.target_modules)
                ),
                task_type="CAUSAL_LM",
            ),
        )
        self.encoder = encoder
        self.latent_scale = latent_scale
        # Not a parameter, nor in the trained weights: the spec carries it (`policy.latent_centre`).
        self.register_buffer("latent_centre", latent_centre, persistent=False)
        blocks = transformer_blocks(self.lm)
        width = self.lm.config.hidden_size
        self.film = nn.ModuleList(FiLM(latent_dim, width) for _ in blocks)
        self._z: torch.Tensor | None = None
        self._film_on = True
        for block, film in zip(blocks, self.film, strict=True):
            block.register_forward_hook(self._film_hook(film))

    def _film_hook(self, film: FiLM):
        def hook(module, args, output):
            if self._z is None or not self._film_on:
                return output
            if isinstance(output, tuple):  # older blocks return (hidden, *extras)
                return (film(output[0], self._z), *output[1:])
            return film(output, self._z)

        return hook

    @contextlib.contextmanager
    def conditioned(self, z: torch.Tensor | None) -> Iterator[None]:
        """Run the LM with FiLM(z): z (batch, latent), one row per sequence in the batch."""
        previous, self._z = self._z, z
        try:
            yield
        finally:
            self._z = previous

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """π_ref: the base model, LoRA and FiLM both off (whatever z is set inside)."""
        self._film_on = False
        try:
            with self.lm.disable_adapter():
                yield
        finally:
            self._film_on = True

    def latent(
        self, chosen: torch.Tensor, rejected: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """z = (μ(C) − centre) / latent_scale from embeddings of the context pairs: (batch, m, dim)
        ×2, mask (batch, m) → (batch, latent); the centre is `latent_centre` (the training users'
        mean), or μ(∅) without one. An empty context gives z = 0 exactly: FiLM is the identity,
        the policy base + LoRA."""
        if self.latent_centre is None:
            return from_empty_context(self.encoder, chosen, rejected, mask) / self.latent_scale
        mean = self.encoder(chosen, rejected, mask).mean
        z = (mean - self.latent_centre.to(mean.dtype)) / self.latent_scale
        return torch.where(mask.any(-1, keepdim=True), z, torch.zeros_like(z))

    def logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        z: torch.Tensor | None,
        keep: int = 0,
    ) -> torch.Tensor:
        """(batch, tokens, vocab) logits, or those of the last `keep` positions only (the LM
        head over a large vocabulary costs more than a small model's blocks)."""
        # Positions count real tokens only, so left padding changes nothing.
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        with self.conditioned(z):
            return self.lm(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=positions,
                logits_to_keep=keep,
            ).logits

    def forward(
        self,
        batch: PolicyBatch,
        use_latent: bool = True,
        reference: torch.Tensor | None = None,
    ) -> PolicyOutput:
        """Sequence log-probs of every target response under π(·|x, z) and under π_ref.
        `reference` (sequences,), when already known (evaluation scores the same target pairs
        at every context size), skips π_ref's forward pass."""
        context = batch.context
        z = None
        if use_latent:
            latent = self.latent(
                context.context_chosen, context.context_rejected, context.context_mask
            )
            # Each episode's targets × (chosen, rejected) sequences read its z.
            per_episode = batch.input_ids.shape[0] // latent.shape[0]
            z = latent.repeat_interleave(per_episode, dim=0)  # (sequences, latent)
        # Sequences are left-padded: the logits of the last response_width + 1 positions
        # predict every response token.
        keep = batch.response_width + 1
        ids, responses = batch.input_ids[:, -keep:], batch.response_mask[:, -keep:]
        args = (batch.input_ids, batch.attention_mask)
        # π_ref first: its pass then peaks before the policy's activations are held for backward.
        if reference is None:
            with torch.no_grad(), self.reference():
                reference = sequence_logprobs(self.logits(*args, None, keep), ids, responses)
        policy = sequence_logprobs(self.logits(*args, z, keep), ids, responses)
        episodes = context.context_mask.shape[0]
        # (episodes, targets, 2): chosen then rejected
        return PolicyOutput(
            policy.view(episodes, -1, 2),
            reference.view(episodes, -1, 2),
            batch.response_mask.sum(-1).view(episodes, -1, 2),
        )

    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, z: torch.Tensor | None, **kw
    ) -> torch.Tensor:
        """HF generate with FiLM(z), a different z per row (greedy or sampling, not beams:
        beam search reorders rows)."""
        if kw.get("num_beams", 1) != 1:
            raise ValueError("conditioned generation supports num_beams=1 only")
        with self.conditioned(z):
            return self.lm.generate(input_ids=input_ids, attention_mask=attention_mask, **kw)


def sequence_logprobs(
    logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor
) -> torch.Tensor:
    """Σ log π(token | prefix) over the response tokens only. logits (batch, tokens, vocab),
    input_ids and response_mask (batch, tokens), mask 1 on response tokens → (batch,)."""
    # Token t is predicted by the logits at t − 1. logit − logsumexp instead of a full
    # log_softmax: no second (batch, tokens, vocab) tensor kept for backward.
    logits = logits[:, :-1].float()
    targets = input_ids[:, 1:]
    picked = logits.gather(-1, targets[..., None]).squeeze(-1)  # (batch, tokens − 1)
    token_logprobs = picked - torch.logsumexp(logits, dim=-1)
    return (token_logprobs * response_mask[:, 1:].to(token_logprobs.dtype)).sum(-1)


@PREFERENCE_LOSSES.register("sigmoid")
def sigmoid_loss(chosen_ratio: torch.Tensor, rejected_ratio: torch.Tensor, beta: float):
    """DPO: −log σ(β (r_w − r_l)), r = log π(y) − log π_ref(y). Only the gap counts: it can open
    by making the rejected answer unlikely while the chosen one stays as unlikely as it was."""
    return -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))


@PREFERENCE_LOSSES.register("apo_zero")
def apo_zero_loss(chosen_ratio: torch.Tensor, rejected_ratio: torch.Tensor, beta: float):
    """APO-zero (D'Oosterlinck et al. 2024, TRL's `apo_zero`): 1 − σ(β r_w) + σ(β r_l), each
    answer against π_ref on its own: the chosen one must become likelier whatever happens to
    the rejected. For chosen answers better than what the policy writes (a formal user's
    "According to the report, ..." against the base model's "The ..."), where DPO lowers the
    rejected style and greedy decoding keeps the base model's."""
    return 1 - torch.sigmoid(beta * chosen_ratio) + torch.sigmoid(beta * rejected_ratio)


def log_ratios(output: PolicyOutput, per_token: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The implicit rewards' log π(y | x, z) − log π_ref(y | x) of the chosen and the rejected
    answers, (episodes, targets) each: summed over each response's tokens (DPO), or averaged
    over them with `per_token` (SimPO's length normalisation)."""
    chosen, rejected = (output.logprobs - output.reference).unbind(-1)
    if not per_token:
        return chosen, rejected
    lengths = output.lengths.clamp(min=1)
    return chosen / lengths[..., 0], rejected / lengths[..., 1]


def preference_metrics(
    output: PolicyOutput,
    beta: float,
    sft_weight: float = 0.0,
    loss: str = "sigmoid",
    with_context: torch.Tensor | None = None,
    per_token: bool = False,
) -> tuple[torch.Tensor, dict]:
    """Mean training loss and per-episode metrics: nll (the DPO loss on the log-ratios the loss
    reads), sft_nll and the implicit-reward accuracy (share of target pairs whose chosen answer
    has the higher of those log-ratios, as evaluation scores it). The loss is the registered
    preference `loss` on episodes `with_context` (episodes,) bool, None: all, and DPO on the
    others, + sft_weight · the chosen response's per-token NLL. `per_token`: see `log_ratios`
    (β is then per token).

    With no context (or a context-blind policy) two users who dispute a pair ask for opposite
    things from one policy, and the pooled answer is no preference: DPO's two losses pull the
    margin back to 0, where APO-zero's add up to a constant and leave base + LoRA to drift.

    Summed log-ratios reward a policy that makes every token a little less likely whenever the
    chosen answer is the shorter one: the longer answer loses more in total. A policy reading z
    can then serve users who prefer short answers by degrading its text for every user whose z
    is far from 0, users who prefer long ones included. Averaged per token, degrading every
    token alike moves both ratios equally and the preference loss gains nothing from it."""
    chosen = output.logprobs[..., 0]
    chosen_ratio, rejected_ratio = log_ratios(output, per_token)
    nll = sigmoid_loss(chosen_ratio, rejected_ratio, beta)
    preference = PREFERENCE_LOSSES[loss](chosen_ratio, rejected_ratio, beta)
    if with_context is not None:
        preference = torch.where(with_context[:, None], preference, nll)
    sft = -chosen / output.lengths[..., 0].clamp(min=1)  # (episodes, targets) each
    metrics = {
        "nll": nll.mean(1),
        "sft_nll": sft.mean(1),
        "accuracy": (chosen_ratio > rejected_ratio).float().mean(1),
    }
    total = (preference + sft_weight * sft).mean()
    return total, metrics


# --- the registered policies -----------------------------------------------------------------


@dataclass(frozen=True)
class PolicyKind:
    """A registered policy: the same network, conditioned on z or not."""

    use_latent: bool
    description: str


POLICY_MODELS.register("npdpo")(PolicyKind(True, "NP-DPO: LoRA + FiLM(z), z from the context"))
POLICY_MODELS.register("dpo")(
    PolicyKind(False, "plain DPO with LoRA, every user's labels pooled, context ignored")
)


# --- building, saving and loading -----------------------------------------------------------

SPEC_FILE = "policy.json"
# Settings that older checkpoints carry and that acted in training only: `centring`, a penalty on
# the users' Σz from before z was measured from their mean. Such a checkpoint reads z from μ(∅).
TRAINING_ONLY_KEYS = ("centring",)
WEIGHTS_FILE = "policy.safetensors"


def truncate_blocks(lm: nn.Module, num_layers: int) -> None:
    """Keep the first `num_layers` transformer blocks (a cheap stand-in model for quick runs)."""
    blocks = transformer_blocks(lm)
    del blocks[num_layers:]
    lm.config.num_hidden_layers = num_layers
    if getattr(lm.config, "layer_types", None):
        lm.config.layer_types = lm.config.layer_types[:num_layers]


def available_device() -> torch.device:
    """This process's GPU when it has one (Ray gives a task or replica that asked for a GPU
    exactly that one), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_of(model: nn.Module) -> torch.device:
    """Where the model's weights are (the CPU for a model without any)."""
    return next(model.parameters(), torch.empty(0)).device


def base_dtype(name: str) -> torch.dtype:
    """`policy.dtype` as a torch dtype ("auto": bfloat16 on a GPU that supports it)."""
    if name == "auto":
        gpu_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if gpu_bf16 else torch.float32
    return getattr(torch, name)


def build_policy(config: PolicyConfig, feature_dim: int, use_latent: bool = True):
    """(policy, tokenizer) from `config.base`'s weights. Without the latent (plain DPO
    baselines) the encoder and FiLM are frozen: only LoRA trains."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from npalign.pretrained import model_path

    path = model_path(config.base)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=base_dtype(config.dtype))
    return steerable(lm, config, feature_dim, use_latent), tokenizer


def steerable(
    lm: nn.Module, config: PolicyConfig, feature_dim: int, use_latent: bool = True
) -> SteerablePolicy:
    """Any HF causal LM (loaded, or built on the meta device to size a configuration) made the
    policy of `config`: blocks truncated, activation checkpointing, context encoder, LoRA, FiLM."""
    if config.num_layers:
        truncate_blocks(lm, config.num_layers)
    if config.gradient_checkpointing:
        # transformers checkpoints each block's forward, not its call: the FiLM hooks run once,
        # outside the recomputed part, with the z of the forward pass.
        lm.activation_checkpointing_enable()
    encoder = starting_encoder(config, feature_dim)
    targets = config.lora_targets
    lora = LoraSettings(
        config.lora_rank,
        config.lora_alpha,
        config.lora_dropout,
        targets if isinstance(targets, str) else tuple(targets),
    )
    scale = 1.0 if config.latent_scale is None else config.latent_scale
    centre = None if config.latent_centre is None else torch.tensor(config.latent_centre)
    policy = SteerablePolicy(lm, encoder, config.latent_dim, lora, scale, centre)
    if not use_latent:
        for p in [*policy.encoder.parameters(), *policy.film.parameters()]:
            p.requires_grad_(False)
    return policy


def starting_encoder(config: PolicyConfig, feature_dim: int) -> ContextEncoder:
    """z's context encoder before training: `config.encoder_init`'s NP-BTL encoder, or a fresh
    one."""
    encoder = ContextEncoder(
        feature_dim,
        config.hidden_dim,
        config.latent_dim,
        config.aggregation,
        variational=config.latent == "variational",
        dropout=config.encoder_dropout,
    )
    if config.encoder_init:
        from npalign.models.reward import load_reward_model

        reward = load_reward_model(config.encoder_init)  # a path or a URI
        if not getattr(reward, "uses_context", False):
            raise ValueError(
                f"policy.encoder_init {config.encoder_init}: a {type(reward).__name__} has no "
                "context encoder; name an NP-BTL checkpoint"
            )
        if reward.variational != encoder.variational:
            kind = "variational" if reward.variational else "deterministic"
            raise ValueError(
                f"policy.encoder_init {config.encoder_init}: its NP-BTL's latent is {kind}; "
                f"set policy.latent: {kind}"
            )
        encoder.load_state_dict(reward.context_encoder.state_dict())  # strict: dims must match
    return encoder


def from_empty_context(
    encoder: ContextEncoder, chosen: torch.Tensor, rejected: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """μ(C) − μ(∅): the mean of q(z | context) measured from the empty context's, (batch, m,
    dim) ×2 and mask (batch, m) → (batch, latent)."""
    # The empty context rides along as one more row of the same call: under ZeRO-3 the
    # encoder's parameters are gathered only inside its forward.
    chosen, rejected, mask = (
        torch.cat([t, t.new_zeros((1, *t.shape[1:]))]) for t in (chosen, rejected, mask)
    )
    mean = encoder(chosen, rejected, mask).mean
    return mean[:-1] - mean[-1:]


@torch.no_grad()
def measure_latent_frame(
    encoder: ContextEncoder, chosen: torch.Tensor, rejected: torch.Tensor, mask: torch.Tensor
) -> tuple[list[float], float]:
    """The users' mean μ(C) over their contexts (as `latent` takes them, each with some pairs)
    and the root mean square distance of μ(C) from it: the `policy.latent_centre` and
    `policy.latent_scale` that put their z around 0 at about 1 in norm."""
    encoder.eval()
    mean = encoder(chosen, rejected, mask).mean
    centre = mean.mean(0)
    return centre.tolist(), float((mean - centre).square().sum(-1).mean().sqrt())


def trainable_state(policy: nn.Module) -> set[str]:
    return {n for n, p in policy.named_parameters() if p.requires_grad}


@dataclass
class PolicyCheckpoint:
    """What `load_policy` returns: the network, its tokenizer, whether it is conditioned on z,
    the encoder setting that embeds a user's context pairs (the one it was trained with), its
    decoding and whether its log-ratios were averaged per token in training."""

    policy: SteerablePolicy
    tokenizer: object
    use_latent: bool
    embed: EmbedConfig
    feature_dim: int
    decoding: DecodingConfig
    per_token: bool

    @property
    def device(self) -> torch.device:
        return device_of(self.policy)

    @functools.cached_property
    def word_tokens(self) -> torch.Tensor:
        """(vocab,) bool: the tokens that hold a letter (the decoding's word-run guard)."""
        texts = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
        return torch.tensor([any(c.isalpha() for c in text) for text in texts])


def save_policy(
    folder: Path,
    config: PolicyConfig,
    embed: EmbedConfig,
    feature_dim: int,
    use_latent: bool,
    state_dict: dict[str, torch.Tensor],
) -> None:
    """Adapters, FiLM and context encoder together (the trained part; the base comes from
    `config.base`), plus what is needed to rebuild the network and embed contexts. The folder
    is self-contained: the encoder's trained weights are in it, so the NP-BTL run that
    initialised them is named (`initialised_from`) but never read again."""
    from safetensors.torch import save_file

    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(tmp))
    rebuilt = config.model_copy(update={"encoder_init": None, "encoder_job": None})
    spec = {
        "policy": rebuilt.model_dump(mode="json"),
        "initialised_from": config.encoder_init,
        "embed": embed.model_dump(mode="json"),
        "feature_dim": feature_dim,
        "use_latent": use_latent,
    }
    write_json(folder / SPEC_FILE, spec)


def load_policy(
    folder: str | Path | Location, device: torch.device | str = "cpu"
) -> PolicyCheckpoint:
    """The policy of a checkpoint folder (a path or a URI), in eval mode on `device` (the base LM
    in `policy.dtype`: bfloat16 on a GPU by default); every trained tensor must be there and
    nothing else (strict). Only the spec and the trained weights are read, never the ZeRO shards
    beside them."""
    from safetensors.torch import load_file

    folder = Location(folder)
    spec = json.loads((folder / SPEC_FILE).read_text())
    settings = {k: v for k, v in spec["policy"].items() if k not in TRAINING_ONLY_KEYS}
    # The trained encoder is in the weights: an initialising NP-BTL run is not needed (nor read).
    config = PolicyConfig.model_validate(settings).model_copy(update={"encoder_init": None})
    policy, tokenizer = build_policy(config, spec["feature_dim"], spec["use_latent"])
    with (folder / WEIGHTS_FILE).local_copy() as weights:
        state = load_file(str(weights))
    expected = trainable_state(policy)
    if set(state) != expected:
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(
            f"{folder / WEIGHTS_FILE}: does not match the policy it describes: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    policy.load_state_dict(state, strict=False)  # the frozen base comes from config.base
    return PolicyCheckpoint(
        policy.to(device).eval(),
        tokenizer,
        spec["use_latent"],
        EmbedConfig.model_validate(spec["embed"]),
        spec["feature_dim"],
        config.decoding,
        config.per_token,
    )
