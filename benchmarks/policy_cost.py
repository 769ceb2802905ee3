"""What NP-DPO costs against the field's tools, side by side on the same model and batch.

- One training step: the policy task's loss inside a DeepSpeed ZeRO-2 engine (one process; on
  a GPU with nccl and bf16, as training runs there) vs TRL's DPOTrainer with the same LoRA,
  model, pairs, lengths, β, SFT weight and lr, each in its own fresh process (median step time,
  tokens/s, peak RSS and, on a GPU, peak GPU memory). TRL sums the log-ratios, so with the
  configuration's per-token β its loss differs from ours; a step's cost does not.
- Conditioned generation (z from context embeddings + FiLM + LoRA) vs plain HF `generate` of
  the base model: same prompts, same number of new tokens, greedy.

Goals: step ≤ 1.15× TRL's time, peak RSS ≤ 1.1×, generation ≤ 1.15× HF generate. Needs TRL
(benchmark-only): `make bench-deps`. A few minutes on a 2-core CPU box.

  .venv/bin/python benchmarks/policy_cost.py --out benchmarks/policy_cost.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from npalign.config import PolicyJobConfig, load_config
from npalign.data.episodes import episode_arrays, sample_train_val
from npalign.data.preferences import PairTable
from npalign.data.sequences import collate_policy, prompt_tokens
from npalign.files import write_json
from npalign.models.policy import truncate_blocks
from npalign.recipes.outline import Splits
from npalign.recipes.policy import POLICY

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("policy_cost")


def cost_batch(job: PolicyJobConfig, splits: Splits) -> dict:
    """One training batch of the job's shape: our PolicyBatch and the same pairs as text."""
    pairs = splits.pairs["train"]
    episodes = sample_train_val(job.data, splits.pairs)["train"].slice(0, job.train.batch_size)
    rows = episode_arrays(episodes, ("context", "target"))
    batch = collate_policy(rows, pairs, splits.tokens["train"])
    text = splits.text["train"].to_pydict()
    triples = []
    for i in rows["target"].reshape(-1):
        a, b = text["response_a"][i], text["response_b"][i]
        chosen, rejected = (b, a) if pairs.choice[i] else (a, b)
        triples.append((text["prompt"][i], chosen, rejected))
    return {"batch": batch, "triples": triples}


def peak_rss_mib() -> float:
    """This process's peak resident memory. Not getrusage's ru_maxrss: Linux carries that over
    from the parent through fork + exec, so both sides would report the parent's peak."""
    status = Path("/proc/self/status").read_text()
    return (
        int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
        / 1024
    )


def peak_memory(device: torch.device) -> dict:
    """Peak resident memory of this process, and the GPU's peak allocation when on one."""
    out = {"peak_rss_mib": peak_rss_mib()}
    if device.type == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def cost_worker_npdpo(job: PolicyJobConfig, batch, steps: int) -> dict:
    """Our training step: the policy task's loss inside a DeepSpeed ZeRO-2 engine (world 1), on
    the GPU with nccl and bf16 when there is one (as the training loop), else gloo on CPU."""
    import torch.distributed as dist

    from npalign.models.policy import available_device
    from npalign.train.deepspeed import use_bf16
    from npalign.train.loop import build_engine, release_freed_memory
    from npalign.train.policy import PolicyTask

    device = available_device()
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT="29531", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0"
    )
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    task = PolicyTask(job, batch.context.context_chosen.shape[-1], True, data={})
    engine, _ = build_engine(task, job.train, steps + 1, world=1)
    batch = batch.to(device, torch.bfloat16 if use_bf16(job.train) else torch.float32)
    times = []
    for step in range(steps + 1):  # the first step warms up
        started = time.perf_counter()
        loss, _ = task.loss(engine, batch, step)
        engine.backward(loss)
        engine.step()
        release_freed_memory(device)  # as the training loop does after each step
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    dist.destroy_process_group()
    return {"step_s": float(np.median(times[1:])), **peak_memory(device)}


def cost_worker_trl(job: PolicyJobConfig, triples, steps: int) -> dict:
    """TRL's DPOTrainer with the same LoRA, model, batch of pairs, lengths, β and lr."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from npalign.models.policy import available_device, base_dtype
    from npalign.pretrained import model_path

    class StepTimer(TrainerCallback):
        times: list[float] = []

        def on_step_begin(self, args, state, control, **kw):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.started)

    p = job.policy
    path = model_path(p.base)
    rows = [
        {
            "prompt": [{"role": "user", "content": prompt}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
        }
        for prompt, chosen, rejected in triples
    ]
    device = available_device()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=base_dtype(p.dtype))
    if p.num_layers:  # the same cut-down model as ours
        truncate_blocks(model, p.num_layers)
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as folder:
        trainer = DPOTrainer(
            model=model,
            args=DPOConfig(
                output_dir=folder,
                per_device_train_batch_size=len(rows),
                max_steps=steps + 1,
                learning_rate=job.train.lr,
                beta=p.beta,
                max_length=p.max_prompt_tokens + p.max_response_tokens,
                max_grad_norm=job.train.grad_clip,
                # Our loss: the preference loss (TRL's names; ours trains DPO on episodes
                # without context, at the same cost) + sft_weight · the chosen response's
                # per-token NLL.
                loss_type=[p.loss, "sft"] if p.sft_weight else [p.loss],
                loss_weights=[1.0, p.sft_weight] if p.sft_weight else None,
                # TRL turns activation checkpointing on by default; our step keeps activations,
                # so like for like is off.
                gradient_checkpointing=False,
                use_cpu=device.type == "cpu",
                bf16=device.type == "cuda",
                save_strategy="no",
                report_to=[],
                logging_steps=10_000,
                disable_tqdm=True,
                dataloader_num_workers=0,
                seed=0,
            ),
            train_dataset=Dataset.from_list(rows * (steps + 1)),
            processing_class=AutoTokenizer.from_pretrained(path),
            peft_config=LoraConfig(
                r=p.lora_rank,
                lora_alpha=p.lora_alpha,
                lora_dropout=p.lora_dropout,
                target_modules=p.lora_targets,
                task_type="CAUSAL_LM",
            ),
            callbacks=[timer],
        )
        trainer.train()
    return {"step_s": float(np.median(timer.times[1:])), **peak_memory(device)}


def training_cost(job: PolicyJobConfig, config_args: list[str], batch: dict, steps: int) -> dict:
    """Each side in its own fresh process (peak RSS is per process), one after the other."""
    out = {}
    with tempfile.TemporaryDirectory() as folder:
        spec = Path(folder) / "batch.pkl"
        # Our own temporary file, written just above: pickle carries the batch dataclass as is.
        spec.write_bytes(pickle.dumps(batch))
        for side in ("npdpo", "trl"):
            result = Path(folder) / f"{side}.json"
            command = [
                sys.executable,
                __file__,
                *config_args,
                "--cost-worker",
                side,
                "--cost-batch",
                str(spec),
                "--cost-steps",
                str(steps),
                "--out",
                str(result),
            ]
            log.info("training cost: %s, %d steps in a fresh process", side, steps)
            subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
            out[side] = json.loads(result.read_text())
    out["time_ratio"] = out["npdpo"]["step_s"] / out["trl"]["step_s"]
    out["memory_ratio"] = out["npdpo"]["peak_rss_mib"] / out["trl"]["peak_rss_mib"]
    out["sequences_per_step"] = 2 * len(batch["triples"])
    out["tokens_per_step"] = int(batch["batch"].attention_mask.sum())
    for side in ("npdpo", "trl"):
        out[side]["tokens_per_s"] = out["tokens_per_step"] / out[side]["step_s"]
    return out


@torch.no_grad()
def generation_latency(
    job: PolicyJobConfig, pairs: PairTable, prompts: list[str], tokens: int, repeats: int = 3
) -> dict:
    """Seconds for one batch: z from context embeddings then FiLM(z)+LoRA generation, vs plain
    HF generate of the base model; same prompts, exactly `tokens` new tokens each, greedy, loop
    guards on. The policy is freshly built (trained weights cost the same time)."""
    from transformers import AutoModelForCausalLM

    from npalign.inference import ContextEmbeddings, answer_guards, user_latents
    from npalign.models.policy import PolicyCheckpoint, build_policy
    from npalign.pretrained import model_path

    policy, tokenizer = build_policy(job.policy, pairs.feature_dim, use_latent=True)
    p = job.policy
    loaded = PolicyCheckpoint(
        policy.eval(), tokenizer, True, job.data.embed, pairs.feature_dim, p.decoding, p.per_token
    )
    base = AutoModelForCausalLM.from_pretrained(model_path(job.policy.base), dtype=torch.float32)
    if job.policy.num_layers:
        truncate_blocks(base, job.policy.num_layers)
    base.eval()
    tokenizer = loaded.tokenizer
    rows = [prompt_tokens(tokenizer, p) for p in prompts]
    width, pad = max(map(len, rows)), tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    m = max(job.eval.context_sizes)
    contexts = [
        ContextEmbeddings(pairs.features_a[i : i + m], pairs.features_b[i : i + m])
        for i in range(len(prompts))
    ]
    settings = {
        "max_new_tokens": tokens,
        "min_new_tokens": tokens,
        "do_sample": False,
        "pad_token_id": pad,
    }

    # Both sides decode with the checkpoint's loop guards: the policy through npalign's
    # (counting the answer only), the base model through HF generate's own, which have no
    # word-run guard.
    decoding = job.policy.decoding
    guards = answer_guards(decoding, width, lambda: loaded.word_tokens)

    def conditioned():
        z = user_latents(loaded, contexts)
        loaded.policy.generate(
            ids,
            mask,
            z,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            logits_processor=guards,
            **settings,
        )

    def plain():
        base.generate(
            input_ids=ids,
            attention_mask=mask,
            no_repeat_ngram_size=decoding.no_repeat_ngram_size,
            repetition_penalty=decoding.repetition_penalty,
            **settings,
        )

    timings: dict[str, list[float]] = {"conditioned": [], "plain": []}
    conditioned(), plain()  # warm-up
    for _ in range(repeats):  # interleaved, so drifts in machine load hit both
        for name, run in (("conditioned", conditioned), ("plain", plain)):
            started = time.perf_counter()
            run()
            timings[name].append(time.perf_counter() - started)
    out = {name: float(np.median(t)) for name, t in timings.items()}
    return {
        **out,
        "ratio": out["conditioned"] / out["plain"],
        "batch": len(prompts),
        "new_tokens": tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(ROOT / "configs/steer_policy.yaml"))
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--cost-steps", type=int, default=3, help="timed training steps per side")
    parser.add_argument("--latency-tokens", type=int, default=32)
    parser.add_argument("--latency-prompts", type=int, default=8)
    parser.add_argument("--cost-worker", choices=["npdpo", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--cost-batch", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the policy config")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config_args = ["--config", args.config, *args.overrides]
    job = load_config(args.config, args.overrides, PolicyJobConfig)

    if args.cost_worker:
        torch.set_num_threads(2)
        batch = pickle.loads(Path(args.cost_batch).read_bytes())
        if args.cost_worker == "npdpo":
            result = cost_worker_npdpo(job, batch["batch"], args.cost_steps)
        else:
            result = cost_worker_trl(job, batch["triples"], args.cost_steps)
        write_json(args.out, result)
        return

    splits = POLICY.load(job)
    prompts = list(dict.fromkeys(splits.text["test"].column("prompt").to_pylist()))
    latency = generation_latency(
        job, splits.pairs["test"], prompts[: args.latency_prompts], args.latency_tokens
    )
    cost = training_cost(job, config_args, cost_batch(job, splits), args.cost_steps)
    checks = {
        name: {"ratio": ratio, "pass": ratio <= goal}
        for name, ratio, goal in (
            ("training step time ≤ 1.15× TRL", cost["time_ratio"], 1.15),
            ("training peak memory ≤ 1.1× TRL", cost["memory_ratio"], 1.1),
            ("generation latency ≤ 1.15× HF generate", latency["ratio"], 1.15),
        )
    }
    print(
        f"\nTraining step, {cost['sequences_per_step']} sequences: "
        f"NP-DPO {cost['npdpo']['step_s']:.2f} s, RSS {cost['npdpo']['peak_rss_mib']:.0f} MiB; "
        f"TRL DPOTrainer {cost['trl']['step_s']:.2f} s, "
        f"{cost['trl']['peak_rss_mib']:.0f} MiB → time {cost['time_ratio']:.2f}×, "
        f"memory {cost['memory_ratio']:.2f}×"
    )
    print(
        f"Generation, {latency['batch']} prompts × {latency['new_tokens']} tokens: conditioned "
        f"{latency['conditioned']:.2f} s vs plain HF generate {latency['plain']:.2f} s → "
        f"{latency['ratio']:.2f}×"
    )
    for name, check in checks.items():
        print(f"{'PASS' if check['pass'] else 'FAIL'}  {name}: {check['ratio']:.2f}")
    if args.out:
        write_json(
            args.out,
            {
                "config": job.model_dump(mode="json"),
                "training_cost": cost,
                "generation_latency": latency,
                "checks": checks,
            },
        )


if __name__ == "__main__":
    main()
