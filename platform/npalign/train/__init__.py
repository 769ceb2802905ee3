"""Ray Train + DeepSpeed: the one training path, CPU (gloo) and GPU (nccl, bf16)."""
