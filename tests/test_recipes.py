"""The recipes' pieces that need no Ray: the NP-BTL job the policy recipe runs first, and one
user type's rows kept aligned across pairs, text and tokens."""

from pathlib import Path

import numpy as np
import pyarrow as pa
from test_preferences import small_table

from npalign.config import PolicyJobConfig, load_config
from npalign.data.sequences import TokenizedPairs
from npalign.recipes.outline import Splits
from npalign.recipes.policy import encoder_job

ROOT = Path(__file__).resolve().parents[1]


def test_the_encoder_job_trains_npbtl_on_the_policys_data_with_its_dimensions():
    policy = load_config(
        ROOT / "configs/steer_policy.yaml",
        [
            "policy.latent_dim=32",
            "policy.latent=variational",
            "data.steer.stories=40",
            "run.output_dir=/tmp/x",
            "eval.split=val",
        ],
        PolicyJobConfig,
    )
    job = encoder_job(policy)
    assert job.eval.split == "val"  # what the policy is chosen on, never test
    assert job.models == ["npbtl"]
    assert (job.model.latent_dim, job.model.hidden_dim) == (32, policy.policy.hidden_dim)
    # the policy's kind of latent, its own YAML's KL warm-up
    assert (job.model.latent, job.model.kl_anneal_steps) == ("variational", 1500)
    assert job.data.steer == policy.data.steer and job.data.embed == policy.data.embed
    # its own YAML's episodes and optimiser, not the policy's
    assert (job.data.num_targets, job.data.train_episodes, job.train.lr) == (20, 16000, 1e-3)
    assert job.train.num_workers == policy.train.num_workers
    assert job.run.output_dir == "/tmp/x" and job.run.name == "steer-policy-npbtl"


def test_one_types_rows_stay_aligned_across_pairs_text_and_tokens():
    pairs = small_table(rows=6)
    text = pa.table({"pair_id": list(pairs.pair_id)})
    tokens = TokenizedPairs(
        prompt=[np.array([i]) for i in range(6)],
        response_a=[np.array([10 + i]) for i in range(6)],
        response_b=[np.array([20 + i]) for i in range(6)],
        pad_id=0,
    )
    splits = Splits({"train": pairs}, text={"train": text}, tokens={"train": tokens})
    typed = splits.select_type("t1")
    kept = typed.pairs["train"].pair_id.tolist()
    assert kept == ["p1", "p3", "p5"]
    assert typed.text["train"].column("pair_id").to_pylist() == kept
    assert [int(p[0]) for p in typed.tokens["train"].prompt] == [1, 3, 5]
    assert [int(r[0]) for r in typed.tokens["train"].response_b] == [21, 23, 25]
