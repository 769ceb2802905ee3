"""Typed job configuration: YAML file + `key=value` overrides, validated with pydantic.

Every error names the file and the field at fault, and is raised before anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


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
    """Which of the source's columns hold each field of a text preference row. pair_id and
    user_type may be absent: the pair id is then a hash of (prompt, response_a, response_b) and
    the type is the user."""

    prompt: str = "prompt"
    response_a: str = "response_a"
    response_b: str = "response_b"
    user: str = "user"
    choice: str = "choice"
    pair_id: str | None = None
    user_type: str | None = None


class TextSourceConfig(Strict):
    source: str = Field(description="hub name, dataset folder, .jsonl or .parquet file")
    split: str = "train"
    columns: TextColumns = TextColumns()
    max_bad_fraction: float = Field(0.05, ge=0, le=1)


class DataConfig(Strict):
    source: Literal["synthetic", "parquet"] = "synthetic"
    synthetic: SyntheticConfig = SyntheticConfig()
    # For source=parquet: a folder holding train.parquet, val.parquet and test.parquet.
    path: str | None = None
    min_context: int = Field(0, ge=0)
    max_context: int = Field(10, ge=0)
    num_targets: int = Field(20, gt=0)
    train_episodes: int = Field(64_000, gt=0)
    val_episodes: int = Field(1_000, gt=0)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.min_context > self.max_context:
            raise ValueError(
                f"min_context ({self.min_context}) must be <= max_context ({self.max_context})"
            )
        if self.source == "parquet" and not self.path:
            raise ValueError("data.path is required when data.source is 'parquet'")
        return self


ModelKind = Literal["btl", "dpl", "npbtl"]


class ModelConfig(Strict):
    hidden_dim: int = Field(256, gt=0)
    latent_dim: int = Field(64, gt=0)
    aggregation: Literal["mean", "attention"] = "mean"
    latent: Literal["deterministic", "variational"] = "deterministic"
    num_heads: int = Field(4, gt=0)
    kl_weight: float = Field(1.0, ge=0)
    kl_anneal_steps: int = Field(0, ge=0, description="linear warm-up of the KL weight")


class TrainConfig(Strict):
    num_workers: int = Field(2, gt=0)
    # Fractional CPUs leave room for Ray Data's read tasks on small machines (2 workers x 1 CPU on
    # a 2-core box deadlocks them).
    cpus_per_worker: float = Field(0.5, gt=0)
    use_gpu: bool | Literal["auto"] = "auto"
    zero_stage: Literal[0, 1, 2, 3] = 2
    bf16: bool | Literal["auto"] = "auto"
    batch_size: int = Field(64, gt=0, description="episodes per step, summed over workers")
    epochs: int = Field(3, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    max_failures: int = Field(1, ge=0)
    seed: int = 0
    # Failure drill: raise once, right after the checkpoint of this epoch is saved, to exercise
    # FailureConfig and resume-from-checkpoint. Never set in normal runs.
    fail_after_epoch: int | None = None


class EvalConfig(Strict):
    context_sizes: list[int] = [0, 1, 3, 5, 10]
    num_episodes: int = Field(2_000, gt=0, description="test episodes per context size")
    seed: int = 1


class RunSettings(Strict):
    name: str = "reward"
    output_dir: str = "runs"


class RewardJobConfig(Strict):
    run: RunSettings = RunSettings()
    data: DataConfig = DataConfig()
    models: list[ModelKind] = Field(["btl", "dpl", "npbtl"], min_length=1)
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()


class ConfigError(ValueError):
    """A config file or override that does not validate; the message names file and field."""


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is a value, not a section")
        node = child
    node[keys[-1]] = value


def load_config(
    path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), schema=RewardJobConfig
):
    """Read YAML at `path` (or start from defaults), apply `key.sub=value` overrides, validate."""
    source = str(path) if path else "<defaults>"
    tree: dict[str, Any] = {}
    if path:
        try:
            tree = yaml.safe_load(Path(path).read_text()) or {}
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
        _set_dotted(tree, key.strip(), yaml.safe_load(raw))
    try:
        return schema.model_validate(tree)
    except ValidationError as e:
        lines = [f"{source}: invalid configuration"]
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"]) or "<top level>"
            lines.append(f"  {where}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError("\n".join(lines)) from None
