"""The main job: train the reward models and the steerable policy, then serve it to two users.

  python jobs/demo.py                                   # what `make demo` runs
  python jobs/demo.py --set policy:train.epochs=1 --set serve:port=8001 --context 3

Stages, each writing its run folder inside the demo's folder:
1. the paper's synthetic benchmark (--reward-config): BTL, DPL and NP-BTL through Ray Data →
   Ray Train → DeepSpeed, accuracy vs context size on targets never in the context;
2. NP-BTL on the steer task (concise vs detailed users, MiniLM embeddings of news answers), the
   policy config's `policy.encoder_job`, whose context encoder starts z's encoder;
3. NP-DPO on SmolLM2-135M-Instruct (--policy-config; LoRA + FiLM(z)), implicit-reward accuracy
   vs context size;
4. the Ray Serve endpoint (--serve-config) on 127.0.0.1: a concise and a detailed user each
   store --context of their choices; a new user of the last type answers --questions pairs the
   endpoint chooses for them (POST /users/{id}/next-question, from 50 candidates); all three ask
   the same question and the answers are printed; then the endpoint stops.

`--set STAGE:key=value` overrides one stage's config (STAGE: reward, policy or serve), e.g.
`--set policy:policy.num_layers=4`. All configs are checked before anything runs. Prints each
stage's table and the demo folder holding every stage's run folder, the endpoint's user store,
summary.txt and answers.json.
"""

from __future__ import annotations

import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import requests

from npalign.cli import job_parser, run_checked
from npalign.config import (
    ConfigError,
    PolicyJobConfig,
    RewardJobConfig,
    RunSettings,
    ServeConfig,
    load_config,
)
from npalign.data.steer import question_pool, simulated_users
from npalign.files import new_run_folder, write_json, write_text
from npalign.recipes.outline import run_recipe
from npalign.recipes.policy import POLICY, encoder_job
from npalign.recipes.reward import REWARD
from npalign.serving import running_endpoint

STAGES = {"reward": RewardJobConfig, "policy": PolicyJobConfig, "serve": ServeConfig}
log = logging.getLogger("demo")


@dataclass
class DemoRun:
    folder: Path
    table: str  # the endpoint's two answers


def ask_endpoint(
    url: str,
    prompt: str,
    users: dict[str, list[dict]],
    new_tokens: int,
    token: str = "",
    known: tuple[str, ...] = (),
) -> dict:
    """Store each user's choices (POST /users/{id}/choices), then ask the same question for
    them and for the `known` users stored already, all at once (their requests share one batch
    on the replica): {user: answer}. `token`: the endpoint's admin token, when it has one."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    for user, choices in users.items():
        reply = requests.post(
            f"{url}/users/{user}/choices", json={"choices": choices}, headers=headers, timeout=300
        )
        reply.raise_for_status()

    def ask(user: str) -> str:
        body = {"prompt": prompt, "user_id": user, "max_new_tokens": new_tokens}
        reply = requests.post(f"{url}/generate", json=body, headers=headers, timeout=600)
        reply.raise_for_status()
        return reply.json()["response"]

    everyone = [*users, *known]
    with ThreadPoolExecutor(len(everyone)) as pool:
        return dict(zip(everyone, pool.map(ask, everyone), strict=True))


def ask_questions(
    url: str, user: str, candidates: list[dict], answers: list[int], questions: int, token: str = ""
) -> list[dict]:
    """A new user answers `questions` pairs that the endpoint chooses from `candidates`
    ({prompt, response_a, response_b}); `answers` holds their answer to each (1: b). Each
    answer is stored as a choice before the next question is chosen. The questions asked, with
    the expected information and the answer."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    asked = []
    for _ in range(questions):
        reply = requests.post(
            f"{url}/users/{user}/next-question",
            json={"candidates": candidates},
            headers=headers,
            timeout=300,
        )
        reply.raise_for_status()
        question = reply.json()
        a, b = question["response_a"], question["response_b"]
        chosen, rejected = (b, a) if answers[question["index"]] else (a, b)
        choice = {"prompt": question["prompt"], "chosen": chosen, "rejected": rejected}
        reply = requests.post(
            f"{url}/users/{user}/choices", json={"choices": [choice]}, headers=headers, timeout=300
        )
        reply.raise_for_status()
        asked.append({**question, "answer": "b" if answers[question["index"]] else "a"})
    return asked


def run_demo(
    reward_job: RewardJobConfig,
    policy_job: PolicyJobConfig,
    serve: ServeConfig,
    context_pairs: int,
    new_tokens: int,
    questions: int = 3,
) -> DemoRun:
    """The four stages above; configs are validated by the caller, before anything is written."""
    folder = new_run_folder(reward_job.run.output_dir, "demo")
    log.info("demo folder: %s", folder)

    def inside(job):
        return job.model_copy(
            update={"run": RunSettings(name=job.run.name, output_dir=str(folder))}
        )

    tables = []
    log.info("stage 1/4: reward models on the synthetic task")
    synthetic = run_recipe(inside(reward_job), REWARD)
    tables.append(f"Synthetic task, accuracy on target pairs:\n{synthetic.table}")
    print(tables[-1], flush=True)

    log.info("stages 2-3/4: NP-BTL on the steer task, then NP-DPO on %s", policy_job.policy.base)
    trained = run_recipe(inside(policy_job), POLICY)
    tables.append(trained.report)
    print(tables[-1], flush=True)

    log.info("stage 4/4: the endpoint, two users with opposite preferences and a new one")
    serve = serve.model_copy(
        update={
            "policy": trained.results["npdpo"]["checkpoint"],
            "reward": trained.earlier["npbtl"].results["npbtl"]["checkpoint"],
            "store": str(folder / "users.db"),
        }
    )
    test = trained.splits.text["test"]
    prompt, users = simulated_users(test, context_pairs, policy_job.eval.seed)
    new_type = sorted(users)[-1]
    new_user = f"new-{new_type}"
    candidates, labels = question_pool(test, new_type, 50, policy_job.eval.seed)
    with running_endpoint(serve) as url:
        log.info("endpoint up at %s (docs: %s/docs)", url, url)
        asked = ask_questions(url, new_user, candidates, labels, questions, serve.admin_token)
        answers = ask_endpoint(url, prompt, users, new_tokens, serve.admin_token, (new_user,))
    write_json(
        folder / "answers.json",
        {"prompt": prompt, "users": users, "questions": {new_user: asked}, "answers": answers},
    )
    lines = [
        f"The endpoint, each user known by {context_pairs} of their choices, {new_user} by "
        f"{questions} questions it chose for them:",
        *(
            f"  asked: {q['prompt'][:60]}... ({q['selector']}, {q['information']:.3f}); "
            f"answered {q['answer']}"
            for q in asked
        ),
        prompt,
    ]
    for user, answer in answers.items():
        lines.append(f"--- {user} user ({len(answer.split())} words): {answer}")
    tables.append("\n".join(lines))
    write_text(folder / "summary.txt", "\n\n".join(tables) + "\n")
    return DemoRun(folder, tables[-1])


def main(argv: list[str] | None = None) -> int:
    parser = job_parser(__doc__)
    parser.add_argument("--reward-config", default="configs/synthetic.yaml", help="stage 1")
    parser.add_argument("--policy-config", default="configs/steer_policy.yaml", help="stages 2-3")
    parser.add_argument("--serve-config", default="configs/serve.yaml", help="the endpoint")
    parser.add_argument("--context", type=int, default=5, help="choices each demo user gives")
    parser.add_argument("--new-tokens", type=int, default=96, help="length limit of the answers")
    parser.add_argument(
        "--questions", type=int, default=3, help="questions the endpoint chooses for a new user"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="STAGE:KEY=VALUE",
        help="override a field of one stage's config (repeatable)",
    )
    args = parser.parse_args(argv)

    def configs():
        overrides: dict[str, list[str]] = {stage: [] for stage in STAGES}
        for item in args.set:
            stage, _, override = item.partition(":")
            if stage not in STAGES or not override:
                raise ConfigError(
                    f"--set {item!r}: expected STAGE:key=value, STAGE in {list(STAGES)}"
                )
            overrides[stage].append(override)
        files = {
            "reward": args.reward_config,
            "policy": args.policy_config,
            "serve": args.serve_config,
        }
        # The endpoint's checkpoints come from the policy stage: a placeholder until then.
        overrides["serve"].insert(0, "policy=pending")
        loaded = {s: load_config(files[s], overrides[s], STAGES[s]) for s in STAGES}
        policy = loaded["policy"]
        if "npdpo" not in policy.models:
            raise ConfigError(f"{files['policy']}: models must include npdpo (the served policy)")
        if not policy.policy.encoder_job or policy.policy.encoder_init:
            raise ConfigError(
                f"{files['policy']}: the demo trains z's encoder (stage 2): give "
                "policy.encoder_job and no policy.encoder_init"
            )
        encoder_job(policy)  # the NP-BTL stage's config, checked now
        return loaded

    def run():
        c = configs()
        return run_demo(
            c["reward"], c["policy"], c["serve"], args.context, args.new_tokens, args.questions
        )

    result = run_checked(run)
    if result is None:
        return 2
    print(result.table)
    print(f"demo folder: {result.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
