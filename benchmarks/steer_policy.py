"""Steer task, NP-DPO vs pooled DPO on SmolLM2-135M-Instruct (all 30 blocks, packaged, offline).

1. NP-BTL on the same pairs (MiniLM embeddings), whose context encoder starts z's encoder.
2. NP-DPO (LoRA + FiLM(z), encoder from step 1) and pooled DPO (LoRA only, every user's labels
   pooled), each through the platform's Ray Train + DeepSpeed ZeRO-2 path with
   configs/steer_policy.yaml.
3. Implicit-reward accuracy per user type at 0/1/3/5/10 context pairs on test targets never in
   the context (mean ± SEM over test episodes; pooled DPO never reads the context, so it is
   scored once and shown at every m).
4. What the policies *generate*: greedy answers to held-out test prompts for users of each type
   given m of their test-split choices (from other prompts), scored with the steer task's own
   attribute scorer (words for concise vs detailed), against pooled DPO and the base model.
5. Costs measured side by side: one NP-DPO training step (DeepSpeed ZeRO-2 engine, one process)
   vs TRL's DPOTrainer with the same LoRA on the same model and batch (each in its own process:
   step time and peak RSS); conditioned generation (z from context embeddings + FiLM + LoRA) vs
   plain HF `generate` of the base model, same prompts and number of new tokens.

Needs TRL (benchmark-only): `make bench-deps`. About 50 minutes on a 2-core CPU box, plus
~3 minutes the first time to embed the task's texts.

  .venv/bin/python benchmarks/steer_policy.py --out benchmarks/steer_policy.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from npalign.config import (
    PolicyJobConfig,
    load_config,
)
from npalign.data.episodes import episode_arrays
from npalign.data.sequences import collate_policy, prompt_tokens
from npalign.data.steer import SCORERS, SENTENCE_END
from npalign.evaluate import save_plot
from npalign.files import write_json
from npalign.models.policy import truncate_blocks

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("steer_policy")


def summary(values) -> dict[str, float]:
    values = np.asarray(values, dtype=float)
    return {
        "mean": float(values.mean()),
        "sem": float(values.std(ddof=1) / np.sqrt(len(values))),
        "n": len(values),
    }


# --- 1-3: encoder, fits, implicit accuracy -----------------------------------------------------


def encoder_checkpoint(job: PolicyJobConfig) -> tuple[str, str]:
    """Train NP-BTL on the policy's pairs; (its checkpoint, its accuracy table)."""
    from npalign.experiment import run_reward_experiment
    from npalign.policy_experiment import encoder_job

    run = run_reward_experiment(encoder_job(job))
    return run.results["npbtl"]["checkpoint"], run.table


def accuracy_checks(results: dict, sizes: list[int]) -> dict:
    largest = max(sizes)
    by_type = results["npdpo"]["by_type"]
    total = sum(by_type[t][largest]["mean"] for t in by_type)
    checks = {f"npdpo A+B at m={largest} >= 140": {"sum": total, "pass": total >= 140}}
    for user_type, by_m in by_type.items():
        # "Does not fall": each step's drop, if any, is within the two estimates' combined SEM.
        drops = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            slack = float(np.hypot(by_m[a]["sem"], by_m[b]["sem"]))
            drops.append(by_m[a]["mean"] - by_m[b]["mean"] - slack)
        checks[f"npdpo [{user_type}] non-decreasing in m (within SEM)"] = {
            "worst_drop_beyond_sem": max(drops),
            # Accuracies come from float32 sums: a drop of exactly one SEM (100 → 96.67 ± 3.33
            # over 30 episodes) computes as a few 1e-6 points beyond it.
            "pass": max(drops) <= 1e-4,
        }
    return checks


# --- 4: the attribute of generated text vs context ---------------------------------------------


def generation_study(job: PolicyJobConfig, checkpoints: dict, pairs, num_prompts: int, tokens: int):
    """Greedy answers to `num_prompts` test prompts: NP-DPO for a user of each type given m
    choices (per prompt one draw of the largest context from other test prompts, whose first m
    pairs are the context at m, as in the accuracy evaluation), pooled DPO and the base model.
    Returns the attribute summaries and a few sample texts."""
    from npalign.experiment import text_tables
    from npalign.generation import ContextEmbeddings, generate, user_latents
    from npalign.models.policy import load_policy

    test = text_tables(job.data)["test"].to_pydict()
    prompt_ids = np.asarray(test["prompt_id"])
    first_row = {pid: i for i, pid in reversed(list(enumerate(prompt_ids)))}
    chosen_ids = sorted(first_row)[:num_prompts]
    prompts = [test["prompt"][first_row[pid]] for pid in chosen_ids]
    types = {t.name: t for t in job.data.steer.types}
    rng = np.random.default_rng(job.eval.seed)

    npdpo = load_policy(Path(checkpoints["npdpo"]))
    out: dict = {"prompts": len(prompts), "max_new_tokens": tokens, "npdpo": {}, "samples": {}}
    for name, user_type in types.items():
        score = SCORERS[user_type.attribute]
        pool = np.flatnonzero((pairs.user_type == name) & ~np.isin(prompt_ids, chosen_ids))
        out["npdpo"][name] = {}
        drawn = [rng.choice(pool, size=max(job.eval.context_sizes), replace=False) for _ in prompts]
        for m in job.eval.context_sizes:
            contexts = []
            for largest in drawn:
                rows = largest[:m]
                b_chosen = pairs.choice[rows].astype(bool)[:, None]
                a, b = pairs.features_a[rows], pairs.features_b[rows]
                contexts.append(
                    ContextEmbeddings(np.where(b_chosen, b, a), np.where(b_chosen, a, b))
                )
            started = time.perf_counter()
            texts = generate(npdpo, prompts, user_latents(npdpo, contexts), tokens)
            values = [score(t) for t in texts]
            out["npdpo"][name][m] = {
                **summary(values),
                "values": values,
                "degenerate": float(np.mean([degenerate(t) for t in texts])),
                "texts": texts,
            }
            out["samples"][f"npdpo [{name}] m={m}"] = texts[0]
            log.info(
                "generated for %s users, m=%d: %s %.1f (%.0f s)",
                name,
                m,
                user_type.attribute,
                np.mean(values),
                time.perf_counter() - started,
            )
    dpo = load_policy(Path(checkpoints["dpo"]))
    pooled = generate(dpo, prompts, None, tokens)
    with npdpo.policy.reference():  # LoRA and FiLM off: the base model
        base = generate(npdpo, prompts, None, tokens)
    out["samples"]["dpo (pooled)"], out["samples"]["base"] = pooled[0], base[0]
    out["prompt_0"] = prompts[0]
    attributes = {t.attribute for t in types.values()}
    out["dpo"] = {
        a: {**summary([SCORERS[a](t) for t in pooled]), "values": [SCORERS[a](t) for t in pooled]}
        for a in attributes
    }
    out["base"] = {a: summary([SCORERS[a](t) for t in base]) for a in attributes}
    return out


def degenerate(text: str) -> bool:
    """Text no reader would accept, whatever its attribute score: a "word" of over 25 letters
    (tokens glued together: one word to the length scorer), one word making up over half of
    a response of 8 or more words, a sentence of 5 or more words said twice, or over half of
    its word 3-grams repeats of earlier ones (loops inside a sentence too: "I'm sorry, I'm
    sorry, I'm sorry."). Loops inflate a length score."""
    words = text.split()
    if any(len(w) > 25 for w in words):
        return True
    if len(words) >= 8 and max(words.count(w) for w in set(words)) > len(words) / 2:
        return True
    sentences = [s.strip() for s in SENTENCE_END.split(text) if len(s.split()) >= 5]
    if len(sentences) != len(set(sentences)):
        return True
    tokens = re.findall(r"\w+", text.lower())
    grams = [tuple(tokens[i : i + 3]) for i in range(len(tokens) - 2)]
    return len(grams) > 0 and len(set(grams)) < len(grams) / 2


def generation_checks(study: dict, job: PolicyJobConfig) -> dict:
    """For each type: at the largest m its attribute lies on its preferred side of both its own
    m=0 value and pooled DPO's, by more than the SEM of the paired differences over the same
    prompts, and no answer is degenerate (a scorer is easy to game with garbage: 'raciesracies...'
    is one word long)."""
    sizes, checks = job.eval.context_sizes, {}
    for user_type in job.data.steer.types:
        sign = 1 if user_type.prefers == "higher" else -1
        by_m = study["npdpo"][user_type.name]
        last = np.asarray(by_m[max(sizes)]["values"])
        # The same move on the prompts whose answer at the largest m reads as text: loops
        # lengthen an answer, so a length move must not rest on them.
        readable = np.array([not degenerate(t) for t in by_m[max(sizes)]["texts"]])
        share = max(by_m[m]["degenerate"] for m in sizes)
        checks[f"generated text [{user_type.name}] not degenerate at any m"] = {
            "worst_degenerate_share": share,
            "pass": share == 0,
        }
        for against, values in (
            (f"m={min(sizes)}", by_m[min(sizes)]["values"]),
            ("pooled dpo", study["dpo"][user_type.attribute]["values"]),
        ):
            moved = sign * (last - np.asarray(values))
            stats = summary(moved)
            checks[
                f"generated {user_type.attribute} [{user_type.name}] m={max(sizes)} vs {against}"
            ] = {
                "toward_preference": stats,
                "toward_preference_readable_only": summary(moved[readable]),
                # Beyond its SEM: on 16 prompts a shift of a few words is noise.
                "pass": stats["mean"] > stats["sem"],
            }
    return checks


def plot_generation(study: dict, job: PolicyJobConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = job.eval.context_sizes
    attribute = job.data.steer.types[0].attribute
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, by_m in study["npdpo"].items():
        ax.errorbar(
            sizes,
            [by_m[m]["mean"] for m in sizes],
            yerr=[by_m[m]["sem"] for m in sizes],
            marker="o",
            capsize=3,
            label=f"NP-DPO, {name} users",
        )
    for label, style in (("dpo", "k--"), ("base", "k:")):
        ax.axhline(
            study[label][attribute]["mean"],
            linestyle=style[1:],
            color="k",
            label="pooled DPO" if label == "dpo" else "base model",
        )
    ax.set_xlabel("user's context pairs (m)")
    ax.set_ylabel(f"generated {attribute} (steer scorer)")
    ax.set_xticks(sizes)
    save_plot(fig, ax, path)


# --- 5: costs, side by side --------------------------------------------------------------------


def cost_batch(job: PolicyJobConfig, data) -> dict:
    """One training batch of the benchmark's shape: our PolicyBatch and the same pairs as text."""
    from npalign.experiment import sample_train_val, text_tables

    pairs = {split: p for split, (p, _) in data.items()}
    episodes = sample_train_val(job.data, pairs)["train"].slice(0, job.train.batch_size)
    rows = episode_arrays(episodes, ("context", "target"))
    batch = collate_policy(rows, *data["train"])
    text = text_tables(job.data)["train"].to_pydict()
    triples = []
    for i in rows["target"].reshape(-1):
        a, b = text["response_a"][i], text["response_b"][i]
        chosen, rejected = (b, a) if pairs["train"].choice[i] else (a, b)
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


def cost_worker_npdpo(job: PolicyJobConfig, batch, steps: int) -> dict:
    """Our training step: the policy task's loss inside a DeepSpeed ZeRO-2 engine (world 1)."""
    import torch.distributed as dist

    from npalign.train.loop import build_engine
    from npalign.train.policy import PolicyTask

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT="29531", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0"
    )
    dist.init_process_group("gloo")
    task = PolicyTask(job, batch.context.context_chosen.shape[-1], True, data={})
    engine, _ = build_engine(task, job.train, steps + 1, world=1)
    times = []
    for step in range(steps + 1):  # the first step warms up
        started = time.perf_counter()
        loss, _ = task.loss(engine, batch, step)
        engine.backward(loss)
        engine.step()
        times.append(time.perf_counter() - started)
    dist.destroy_process_group()
    return {"step_s": float(np.median(times[1:])), "peak_rss_mib": peak_rss_mib()}


def cost_worker_trl(job: PolicyJobConfig, triples, steps: int) -> dict:
    """TRL's DPOTrainer with the same LoRA, model, batch of pairs, lengths, β and lr."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from npalign.models.pretrained import model_path

    class StepTimer(TrainerCallback):
        times: list[float] = []

        def on_step_begin(self, args, state, control, **kw):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
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
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
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
                # Our loss: DPO + sft_weight · the chosen response's per-token NLL.
                loss_type=["sigmoid", "sft"] if p.sft_weight else ["sigmoid"],
                loss_weights=[1.0, p.sft_weight] if p.sft_weight else None,
                # TRL turns activation checkpointing on by default; our step keeps activations,
                # so like for like is off (the 2026-11-28 run had TRL's default: on).
                gradient_checkpointing=False,
                use_cpu=True,
                bf16=False,
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
                target_modules=list(p.lora_targets),
                task_type="CAUSAL_LM",
            ),
            callbacks=[timer],
        )
        trainer.train()
    return {"step_s": float(np.median(timer.times[1:])), "peak_rss_mib": peak_rss_mib()}


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
    return out


@torch.no_grad()
def generation_latency(
    job: PolicyJobConfig, checkpoint: str, pairs, prompts: list[str], tokens: int, repeats: int = 3
) -> dict:
    """Seconds for one batch: z from context embeddings then FiLM(z)+LoRA generation, vs plain
    HF generate of the base model; same prompts, exactly `tokens` new tokens each, greedy."""
    from transformers import AutoModelForCausalLM

    from npalign.generation import ContextEmbeddings, user_latents
    from npalign.models.policy import load_policy
    from npalign.models.pretrained import model_path

    loaded = load_policy(Path(checkpoint))
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

    def conditioned():
        loaded.policy.generate(ids, mask, user_latents(loaded, contexts), **settings)

    def plain():
        base.generate(input_ids=ids, attention_mask=mask, **settings)

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


# --- the run -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(ROOT / "configs/steer_policy.yaml"))
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument(
        "--prompts", type=int, default=16, help="test prompts generated per user type and m"
    )
    parser.add_argument("--max-new-tokens", type=int, default=128, help="for the generation study")
    parser.add_argument("--cost-steps", type=int, default=3, help="timed training steps per side")
    parser.add_argument("--latency-tokens", type=int, default=32)
    parser.add_argument("--cost-worker", choices=["npdpo", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--cost-batch", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the policy config")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config_args = ["--config", args.config, *args.overrides]
    job = load_config(args.config, ["run.name=bench-policy", *args.overrides], PolicyJobConfig)

    if args.cost_worker:
        torch.set_num_threads(2)
        batch = pickle.loads(Path(args.cost_batch).read_bytes())
        if args.cost_worker == "npdpo":
            result = cost_worker_npdpo(job, batch["batch"], args.cost_steps)
        else:
            result = cost_worker_trl(job, batch["triples"], args.cost_steps)
        write_json(args.out, result)
        return

    from npalign.policy_experiment import policy_data, run_policy_experiment

    started = time.perf_counter()
    encoder, reward_table = encoder_checkpoint(job)
    print(f"\nNP-BTL (z's encoder for NP-DPO), target accuracy:\n{reward_table}")
    job = job.model_copy(update={"policy": job.policy.model_copy(update={"encoder_init": encoder})})
    run = run_policy_experiment(job)
    sizes = job.eval.context_sizes
    checks = accuracy_checks(run.results, sizes)
    fit_minutes = (time.perf_counter() - started) / 60

    data = policy_data(job)  # cached: the steer task, its embeddings and tokens
    test_pairs = data["test"][0]
    checkpoints = {kind: r["checkpoint"] for kind, r in run.results.items()}
    study = generation_study(job, checkpoints, test_pairs, args.prompts, args.max_new_tokens)
    checks.update(generation_checks(study, job))
    plot_generation(study, job, run.folder / "generated_attribute.png")
    latency = generation_latency(
        job, checkpoints["npdpo"], test_pairs, study_prompts(job, 8), args.latency_tokens
    )
    cost = training_cost(job, config_args, cost_batch(job, data), args.cost_steps)
    minutes = (time.perf_counter() - started) / 60

    print(
        f"\nseeds: steer {job.data.steer.seed}, episodes {job.data.seed}, train {job.train.seed}, "
        f"eval {job.eval.seed}; {job.eval.num_episodes} test episodes per m, "
        f"{job.data.num_targets} target pair(s) each; fits {fit_minutes:.1f} min, "
        f"total {minutes:.1f} min"
    )
    print(f"\nImplicit-reward accuracy (targets never in the context):\n{run.table}")
    attribute = job.data.steer.types[0].attribute
    print(
        f"\nGenerated {attribute} (mean ± SEM over {study['prompts']} test prompts, greedy, "
        f"≤ {study['max_new_tokens']} new tokens):"
    )
    print(f"{'':<26}" + "".join(f"{f'm={m}':>14}" for m in sizes))
    for name, by_m in study["npdpo"].items():
        print(
            f"{f'npdpo [{name} users]':<26}"
            + "".join(f"{by_m[m]['mean']:7.1f} ± {by_m[m]['sem']:4.1f}" for m in sizes)
        )
    for label in ("dpo", "base"):
        s, name = study[label][attribute], "dpo (pooled)" if label == "dpo" else label
        print(f"{name:<26}{s['mean']:7.1f} ± {s['sem']:4.1f}  (context-blind)")
    print(f"\nprompt: {study['prompt_0']}")
    for name, text in study["samples"].items():
        if name.endswith(f"m={max(sizes)}") or not name.startswith("npdpo"):
            print(f"--- {name}: {text}")
    print(
        f"\nTraining step, {cost['sequences_per_step']} sequences: "
        f"NP-DPO {cost['npdpo']['step_s']:.2f} s, RSS {cost['npdpo']['peak_rss_mib']:.0f} MiB; "
        f"TRL DPOTrainer {cost['trl']['step_s']:.2f} s, "
        f"{cost['trl']['peak_rss_mib']:.0f} MiB → time {cost['time_ratio']:.2f}× (goal ≤ 1.15), "
        f"memory {cost['memory_ratio']:.2f}× (goal ≤ 1.10)"
    )
    print(
        f"Generation, {latency['batch']} prompts × {latency['new_tokens']} tokens: conditioned "
        f"{latency['conditioned']:.2f} s vs plain HF generate {latency['plain']:.2f} s → "
        f"{latency['ratio']:.2f}× (goal ≤ 1.15)"
    )
    checks["training step time ≤ 1.15× TRL"] = {
        "ratio": cost["time_ratio"],
        "pass": cost["time_ratio"] <= 1.15,
    }
    checks["training peak memory ≤ 1.1× TRL"] = {
        "ratio": cost["memory_ratio"],
        "pass": cost["memory_ratio"] <= 1.1,
    }
    checks["generation latency ≤ 1.15× HF generate"] = {
        "ratio": latency["ratio"],
        "pass": latency["ratio"] <= 1.15,
    }
    for name, check in checks.items():
        print(f"{'PASS' if check['pass'] else 'FAIL'}  {name}: {check}")
    print(f"run folder: {run.folder}")
    if args.out:
        write_json(
            args.out,
            {
                "config": job.model_dump(mode="json"),
                "minutes": minutes,
                "context_sizes": sizes,
                "implicit_accuracy": {
                    k: {"average": v["average"], "by_type": v["by_type"]}
                    for k, v in run.results.items()
                },
                "generation": study,
                "training_cost": cost,
                "generation_latency": latency,
                "checks": checks,
            },
        )


def study_prompts(job: PolicyJobConfig, count: int) -> list[str]:
    from npalign.experiment import text_tables

    prompts = text_tables(job.data)["test"].column("prompt").to_pylist()
    return list(dict.fromkeys(prompts))[:count]


if __name__ == "__main__":
    main()
