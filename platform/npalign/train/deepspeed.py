"""DeepSpeed settings and weight gathering shared by every training task."""

from __future__ import annotations

from typing import Any

import deepspeed
import torch

from npalign.config import ConfigError, TrainConfig, merge_trees


def use_bf16(config: TrainConfig) -> bool:
    # fp16 fails on CPU and bf16 is slow there: "auto" means bf16 on GPUs that support it.
    if config.bf16 == "auto":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return config.bf16


def deepspeed_config(config: TrainConfig, world_size: int) -> dict[str, Any]:
    accumulation = config.gradient_accumulation_steps
    if config.batch_size % (world_size * accumulation):
        raise ValueError(
            f"train.batch_size ({config.batch_size}) must divide evenly over {world_size} workers "
            f"x {accumulation} micro-batches"
        )
    gpu = torch.cuda.is_available()
    zero: dict[str, Any] = {
        "stage": config.zero_stage,
        # Overlapping the gradient reduction with backward needs CUDA streams, and the
        # contiguous gradient buffer fights fragmentation in GPU memory; on CPU both only add
        # copies (about 10 % of a small model's step).
        "overlap_comm": gpu,
        "contiguous_gradients": gpu,
    }
    if config.offload != "none":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": gpu}
    if config.offload == "optimizer_and_params":
        zero["offload_param"] = {"device": "cpu", "pin_memory": gpu}
    built = {
        "train_micro_batch_size_per_gpu": config.micro_batch(world_size),
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": config.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": use_bf16(config)},
        # We hand DeepSpeed a torch AdamW (its fused/CPU Adam kernels JIT-compile for minutes),
        # also when the optimizer state is offloaded: it then steps on the CPU copies.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
    }
    return merge_trees(built, config.deepspeed)


def check_deepspeed_config(config: TrainConfig) -> dict[str, Any]:
    """The DeepSpeed config of `config` on its `num_workers`, validated by DeepSpeed itself in
    this process: a wrong `train.deepspeed` section fails before any run folder or worker."""
    from deepspeed.runtime.config import DeepSpeedConfig

    built = deepspeed_config(config, config.num_workers)
    try:
        DeepSpeedConfig(built)
    except (ValueError, AssertionError) as error:  # pydantic's ValidationError is a ValueError
        message = f"train.deepspeed: DeepSpeed refuses the resulting config: {error}"
        raise ConfigError(message) from None
    return built


def trained_state_dict(engine: deepspeed.DeepSpeedEngine) -> dict[str, torch.Tensor]:
    """The trainable parameters on CPU (all of a reward model; a policy's adapters, FiLM and
    encoder, not its frozen base). Collective under ZeRO-3: every rank must call it."""
    module = engine.module
    trained = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if engine.zero_optimization_stage() == 3:
        with deepspeed.zero.GatheredParameters([p for _, p in trained], modifier_rank=None):
            return {n: p.detach().cpu().clone() for n, p in trained}
    return {n: p.detach().cpu().clone() for n, p in trained}
