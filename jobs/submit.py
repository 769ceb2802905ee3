"""Submit a command as a Ray job that carries this checkout's code to every node.

  python jobs/submit.py --address http://HEAD:8265 -- \\
      python jobs/train_policy.py --config configs/steer_policy_1p5b.yaml
  python jobs/submit.py -- python tune/sweep_reward.py --config configs/sweep_synthetic.yaml

Like `ray job submit --working-dir .`, plus `platform/npalign` shipped as a py_module: the
driver, the Ray Train workers, the Ray Data actors and the Serve replicas of the job all import
the library from this checkout, never from a node's own install. Prints the job's logs as they
come and exits 0 when the job succeeds (--no-wait: prints the job id and returns).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
from pathlib import Path

from npalign.runtime_env import code_runtime_env

ROOT = Path(__file__).resolve().parents[1]
# Settings the job's processes need as the submitting shell has them. Cloud credentials are not
# among them (the job's settings are shown on the dashboard): nodes take theirs from their own
# environment or instance role.
FORWARDED = (
    "NPALIGN_CACHE",
    "NPALIGN_ADMIN_TOKEN",
    "NPALIGN_USER_TOKENS",
    "HF_HOME",
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)


def main(argv: list[str] | None = None) -> int:
    from ray.job_submission import JobStatus, JobSubmissionClient

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS", "http://127.0.0.1:8265"),
        help="the cluster's dashboard (default: $RAY_ADDRESS, else http://127.0.0.1:8265)",
    )
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to ship")
    parser.add_argument("--no-wait", action="store_true", help="submit and return")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the job's command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the job's command after --")

    env = {name: os.environ[name] for name in FORWARDED if name in os.environ}
    client = JobSubmissionClient(args.address)
    job = client.submit_job(
        entrypoint=shlex.join(command), runtime_env=code_runtime_env(args.root, env)
    )
    print(f"submitted {job} to {args.address}", flush=True)
    if args.no_wait:
        return 0

    async def follow() -> None:
        async for lines in client.tail_job_logs(job):
            print(lines, end="", flush=True)

    asyncio.run(follow())
    status = client.get_job_status(job)
    print(f"job {job}: {status}", flush=True)
    return 0 if status == JobStatus.SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main())
