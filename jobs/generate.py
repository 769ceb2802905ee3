"""Generate a user's responses with a trained policy, given a few of that user's choices.

  python jobs/generate.py --checkpoint RUN/checkpoints/npdpo/checkpoint_... \\
      --choices my_choices.jsonl --prompt "What happened in this news story? ..."
  python jobs/generate.py --checkpoint ... --steer-user concise --context 5 --prompt "..."

--choices is a JSONL file of the user's labelled pairs, one per line:
  {"prompt": "...", "chosen": "...", "rejected": "..."}
--steer-user draws --context pairs labelled by that user type from the steer task's test split
(the default task), e.g. to compare a concise and a detailed user on the same prompt. With no
choices at all the policy answers with its "no information" latent. On a machine with a GPU the
policy runs there (bf16 where supported).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from npalign.config import SteerConfig
from npalign.data.steer import build_steer
from npalign.data.text import read_text_splits
from npalign.inference import Choice, embed_choices, generate, user_latents
from npalign.models.policy import available_device, load_policy


def read_choices(path: str) -> list[Choice]:
    choices = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            choices.append(Choice(record["prompt"], record["chosen"], record["rejected"]))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(
                f"{path}: line {number}: expected {{prompt, chosen, rejected}} ({e})"
            ) from None
    return choices


def steer_choices(user_type: str, count: int, seed: int) -> list[Choice]:
    test = read_text_splits(build_steer(SteerConfig()))["test"].to_pylist()
    rows = [r for r in test if r["user_type"] == user_type]
    if not rows:
        types = sorted({r["user_type"] for r in test})
        raise ValueError(f"no steer user type {user_type!r}; the types are {types}")
    picks = np.random.default_rng(seed).choice(len(rows), size=count, replace=False)
    out = []
    for r in (rows[i] for i in picks):
        a, b = r["response_a"], r["response_b"]
        chosen, rejected = (b, a) if r["choice"] else (a, b)
        out.append(Choice(r["prompt"], chosen, rejected))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint", required=True, help="a policy checkpoint folder: a path or a URI"
    )
    parser.add_argument("--prompt", action="append", required=True, help="repeat for several")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--choices", help="JSONL of the user's {prompt, chosen, rejected}")
    source.add_argument("--steer-user", help="a steer user type, e.g. concise or detailed")
    parser.add_argument("--context", type=int, default=5, help="pairs drawn for --steer-user")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy")
    parser.add_argument("--temperature", type=float, default=0.7)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        checkpoint = load_policy(args.checkpoint, available_device())
        if args.choices:
            choices = read_choices(args.choices)
        elif args.steer_user:
            choices = steer_choices(args.steer_user, args.context, args.seed)
        else:
            choices = []
        z = None
        if checkpoint.use_latent:
            contexts = embed_choices(checkpoint, [choices])
            z = user_latents(checkpoint, contexts).expand(len(args.prompt), -1)
        answers = generate(
            checkpoint,
            args.prompt,
            z,
            max_new_tokens=args.max_new_tokens,
            do_sample=args.sample,
            temperature=args.temperature,
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"user context: {len(choices)} choices")
    for prompt, answer in zip(args.prompt, answers, strict=True):
        print(f"\n> {prompt}\n{answer}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
