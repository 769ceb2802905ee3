"""The GPU check: what one GPU shows that the CPU box cannot, in under 8 minutes.

1. NP-BTL on the synthetic task and NP-DPO on the steer task (SmolLM2-135M, all 30 blocks),
   each through the one training path (Ray Train TorchTrainer + DeepSpeed ZeRO-2) on the GPU:
   bf16, nccl; the policy's evaluation runs as a Ray task on the GPU too.
2. The endpoint with `gpus_per_replica: 1`: the replica's device and the latency of a batch of
   conditioned generations.
3. NP-DPO's training step vs TRL's DPOTrainer on the same model and batch on the GPU
   (`policy_cost.py` in subprocesses): tokens/s, peak GPU memory, and conditioned vs plain HF
   generation.

Needs a CUDA GPU with bf16, and Ray, DeepSpeed and TRL installed beside the project's other
requirements (requirements-gpu.txt, `pip install trl==1.16.0`).

  python benchmarks/gpu_check.py --out benchmarks/gpu_check.json
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import torch

from npalign.config import PolicyJobConfig, ServeConfig, load_config
from npalign.files import write_json
from npalign.recipes.outline import run_recipe
from npalign.recipes.policy import POLICY
from npalign.recipes.reward import REWARD
from npalign.serving import running_endpoint

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("gpu_check")
# One GPU, so one worker; its CPUs feed Ray Data.
ON_THE_GPU = [
    "train.num_workers=1",
    "train.cpus_per_worker=4",
    "train.use_gpu=true",
    "train.bf16=true",
    "train.zero_stage=2",
]


def reward_fit(folder: Path) -> dict:
    job = load_config(
        ROOT / "configs/synthetic.yaml",
        [
            f"run.output_dir={folder}",
            "models=[npbtl]",
            "train.epochs=1",
            "train.batch_size=256",
            "eval.num_episodes=1000",
            *ON_THE_GPU,
        ],
    )
    started = time.perf_counter()
    run = run_recipe(job, REWARD)
    npbtl = run.results["npbtl"]
    return {
        "seconds": time.perf_counter() - started,
        "train_episodes_per_s": npbtl["train_metrics"]["steady_episodes_per_s"],
        "accuracy_m10": npbtl["average"][10]["mean"],
        "bayes_limit_m10": run.reference["Bayes limit"][-1],
    }


def policy_fit(folder: Path) -> tuple[dict, str]:
    job = load_config(
        ROOT / "configs/steer_policy.yaml",
        [
            f"run.output_dir={folder}",
            "models=[npdpo]",
            "policy.encoder_job=null",  # the chain's NP-BTL is the reward check's business
            "data.train_episodes=1536",  # 96 steps of 16 episodes
            "train.batch_size=16",
            "eval.num_episodes=64",
            *ON_THE_GPU,
        ],
        PolicyJobConfig,
    )
    started = time.perf_counter()
    run = run_recipe(job, POLICY)
    npdpo = run.results["npdpo"]
    result = {
        "seconds": time.perf_counter() - started,
        "train_episodes_per_s": npdpo["train_metrics"]["steady_episodes_per_s"],
        "implicit_accuracy": {m: v["mean"] for m, v in npdpo["average"].items()},
    }
    return result, npdpo["checkpoint"]


def serving_check(checkpoint: str, folder: Path, requests_at_once: int = 8) -> dict:
    config = ServeConfig(
        policy=checkpoint,
        store=str(folder / "users.db"),
        gpus_per_replica=1,
        cpus_per_replica=2,
        min_replicas=1,
        max_replicas=1,
        port=8765,
    )
    body = {
        "prompt": "Briefly, what happened in this news story? The council approved the budget.",
        "choices": [
            {"prompt": "Say hi.", "chosen": "Hi.", "rejected": "Hello there, how are you today?"}
        ],
        "max_new_tokens": 64,
    }
    with running_endpoint(config) as url:
        health = requests.get(f"{url}/health", timeout=60).json()
        requests.post(f"{url}/generate", json=body, timeout=120).raise_for_status()  # warm-up
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(requests_at_once) as pool:
            answers = list(
                pool.map(
                    lambda _: requests.post(f"{url}/generate", json=body, timeout=120),
                    range(requests_at_once),
                )
            )
        seconds = time.perf_counter() - started
    return {
        "replica_device": health.get("device"),
        "requests": requests_at_once,
        "all_ok": all(a.status_code == 200 for a in answers),
        "seconds_for_all": seconds,
    }


def trl_comparison(folder: Path) -> dict:
    out = folder / "policy_cost.json"
    command = [sys.executable, str(ROOT / "benchmarks/policy_cost.py"), "--out", str(out)]
    subprocess.run([*command, "--cost-steps", "5", "train.batch_size=8"], check=True)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        sys.exit("error: the GPU check needs a CUDA GPU with bf16 (none is visible here)")
    import ray

    ray.init(num_gpus=1)
    results = {"gpu": torch.cuda.get_device_name(0)}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        results["npbtl_fit"] = reward_fit(folder)
        results["npdpo_fit"], checkpoint = policy_fit(folder)
        results["serving"] = serving_check(checkpoint, folder)
        ray.shutdown()  # the TRL side and ours each take the GPU in their own process
        results["policy_cost"] = trl_comparison(folder)
    print(json.dumps(results, indent=2))
    if args.out:
        write_json(args.out, results)


if __name__ == "__main__":
    main()
