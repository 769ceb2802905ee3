"""The main job (`make demo`) on the embedded defaults, end to end:

1. the paper's synthetic benchmark: BTL, DPL and NP-BTL through Ray Data → Ray Train →
   DeepSpeed, accuracy vs context size on targets never in the context;
2. NP-BTL on the steer task (concise vs detailed users, MiniLM embeddings of news answers),
   whose context encoder starts z's encoder;
3. NP-DPO on SmolLM2-135M-Instruct (LoRA + FiLM(z)), implicit-reward accuracy vs context;
4. the steerable endpoint on Ray Serve (127.0.0.1): two users with opposite preferences each
   send a few of their own choices, then one question each; both answers are printed and the
   endpoint is stopped.

Every stage writes its run folder inside the demo's folder (plus the endpoint's user store and
`answers.json`).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npalign.config import PolicyJobConfig, RewardJobConfig, RunSettings, ServeConfig
from npalign.files import write_json, write_text

log = logging.getLogger(__name__)


@dataclass
class DemoRun:
    folder: Path
    table: str  # every stage's table and the two answers


def steer_users(job: PolicyJobConfig, context_pairs: int, seed: int) -> tuple[str, dict]:
    """A held-out test prompt and, for one user of each type, `context_pairs` of that type's
    test-split choices on other prompts, as text: (prompt, {type: [{prompt, chosen, rejected}]})."""
    from npalign.experiment import text_tables

    test = text_tables(job.data)["test"].to_pydict()
    prompt_ids = np.asarray(test["prompt_id"])
    prompt_row = int(np.flatnonzero(prompt_ids == prompt_ids[0])[0])
    rng = np.random.default_rng(seed)
    users = {}
    for user_type in sorted(set(test["user_type"])):
        pool = np.flatnonzero(
            (np.asarray(test["user_type"]) == user_type) & (prompt_ids != prompt_ids[0])
        )
        choices = []
        for row in rng.choice(pool, size=context_pairs, replace=False):
            a, b = test["response_a"][row], test["response_b"][row]
            chosen, rejected = (b, a) if test["choice"][row] else (a, b)
            choices.append({"prompt": test["prompt"][row], "chosen": chosen, "rejected": rejected})
        users[user_type] = choices
    return test["prompt"][prompt_row], users


def ask_endpoint(url: str, prompt: str, users: dict[str, list[dict]], new_tokens: int) -> dict:
    """Store each user's choices (POST /users/{id}/choices), then ask the same question for all
    users at once (their requests share one batch on the replica): {user: answer}."""
    import requests

    for user, choices in users.items():
        reply = requests.post(f"{url}/users/{user}/choices", json={"choices": choices}, timeout=300)
        reply.raise_for_status()

    def ask(user: str) -> str:
        body = {"prompt": prompt, "user_id": user, "max_new_tokens": new_tokens}
        reply = requests.post(f"{url}/generate", json=body, timeout=600)
        reply.raise_for_status()
        return reply.json()["response"]

    with ThreadPoolExecutor(len(users)) as pool:
        return dict(zip(users, pool.map(ask, users), strict=True))


def run_demo(
    reward_job: RewardJobConfig,
    policy_job: PolicyJobConfig,
    serve: ServeConfig,
    context_pairs: int,
    new_tokens: int,
) -> DemoRun:
    """The four stages above; configs are validated by the caller, before anything is written."""
    from npalign.experiment import run_reward_experiment
    from npalign.policy_experiment import encoder_job, run_policy_experiment
    from npalign.serving import running_endpoint

    folder = Path(reward_job.run.output_dir) / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    folder.mkdir(parents=True, exist_ok=False)
    log.info("demo folder: %s", folder)

    def inside(job):
        return job.model_copy(
            update={"run": RunSettings(name=job.run.name, output_dir=str(folder))}
        )

    tables = []
    log.info("stage 1/4: reward models on the synthetic task")
    synthetic = run_reward_experiment(inside(reward_job))
    tables.append(f"Synthetic task, accuracy on target pairs:\n{synthetic.table}")
    print(tables[-1], flush=True)

    log.info("stage 2/4: NP-BTL on the steer task (it starts NP-DPO's context encoder)")
    encoder = run_reward_experiment(inside(encoder_job(policy_job)))
    tables.append(f"Steer task, NP-BTL accuracy on target pairs:\n{encoder.table}")
    print(tables[-1], flush=True)

    log.info("stage 3/4: NP-DPO on %s", policy_job.policy.base)
    policy = policy_job.policy.model_copy(
        update={"encoder_init": encoder.results["npbtl"]["checkpoint"]}
    )
    trained = run_policy_experiment(inside(policy_job.model_copy(update={"policy": policy})))
    tables.append(f"NP-DPO implicit-reward accuracy on target pairs:\n{trained.table}")
    print(tables[-1], flush=True)

    log.info("stage 4/4: the endpoint, two users with opposite preferences")
    serve = serve.model_copy(
        update={
            "policy": trained.results["npdpo"]["checkpoint"],
            "reward": encoder.results["npbtl"]["checkpoint"],
            "store": str(folder / "users.db"),
        }
    )
    prompt, users = steer_users(policy_job, context_pairs, policy_job.eval.seed)
    with running_endpoint(serve) as url:
        log.info("endpoint up at %s (docs: %s/docs)", url, url)
        answers = ask_endpoint(url, prompt, users, new_tokens)
    write_json(folder / "answers.json", {"prompt": prompt, "users": users, "answers": answers})
    lines = [f"The endpoint, each user known by {context_pairs} of their choices:", prompt]
    for user, answer in answers.items():
        lines.append(f"--- {user} user ({len(answer.split())} words): {answer}")
    tables.append("\n".join(lines))
    write_text(folder / "summary.txt", "\n\n".join(tables) + "\n")
    return DemoRun(folder, tables[-1])
