"""The policy recipe: NP-DPO, pooled DPO (any registered policy) and the per-type DPO oracle on
a text source. Contexts are embedded (for z), target pairs tokenized (for the DPO loss).

Its `prepare` is the NP-BTL → NP-DPO chain (`with_trained_encoder`), so the policy job, the
demo, the benchmark and the policy sweep all run it: an NP-BTL reward model trained on the
policy's own pairs, whose context encoder starts z's encoder, then the policy. The NP-BTL job
comes from the YAML named by `policy.encoder_job` (episodes, optimiser, evaluation:
`configs/steer_encoder.yaml`), on the policy job's data, with the encoder's dimensions and latent
kind taken from the policy (they must match to load its weights) and the policy's training
resources.
"""

from __future__ import annotations

from npalign.config import (
    EvalConfig,
    PolicyJobConfig,
    RewardJobConfig,
    load_tree,
    merge_trees,
    validate_config,
)
from npalign.data.embed import embed_pairs
from npalign.data.sequences import tokenize_pairs
from npalign.data.sources import source_splits
from npalign.evaluation.policy import evaluate_policy
from npalign.files import Location
from npalign.recipes.outline import Recipe, Run, Splits, run_recipe
from npalign.recipes.reward import REWARD
from npalign.registry import POLICY_MODELS


def load_splits(job: PolicyJobConfig) -> Splits:
    from transformers import AutoTokenizer

    from npalign.pretrained import model_path

    tables = source_splits(job.data)  # a text source (PolicyJobConfig)
    tokenizer = AutoTokenizer.from_pretrained(model_path(job.policy.base))
    p = job.policy
    tokens = {
        split: tokenize_pairs(
            table, tokenizer, p.max_prompt_tokens, p.max_response_tokens, f"{split} split"
        )
        for split, table in tables.items()
    }
    pairs, _ = embed_pairs(tables, job.data.embed)
    return Splits(pairs, text=tables, tokens=tokens)


def fit(job: PolicyJobConfig, model: str, splits: Splits, files, storage, name, callbacks=None):
    from npalign.train.policy import fit_policy  # Ray Train: imported only when training

    data = {split: (splits.pairs[split], splits.tokens[split]) for split in splits.pairs}
    use_latent = POLICY_MODELS[model].use_latent
    return fit_policy(job, use_latent, data, files, storage, name, callbacks)


def evaluate(
    job: PolicyJobConfig, checkpoint: Location, splits: Splits, split: str, settings: EvalConfig
) -> dict:
    """Scored in a Ray task placed like one training worker (its CPUs and custom resources, a
    GPU when they use GPUs), not in the driver: on a cluster the driver sits on a head node with
    no room for a model."""
    import ray

    from npalign.train.loop import uses_gpu  # Ray Train: loaded only to place the task

    cpus = job.train.cpus_per_worker
    task = ray.remote(evaluate_in_task).options(
        num_cpus=cpus, num_gpus=int(uses_gpu(job.train)), resources=job.train.worker_resources
    )
    args = (splits.pairs[split], splits.tokens[split], settings, job.data.num_targets)
    return ray.get(task.remote(max(1, round(cpus)), checkpoint, *args))


def evaluate_in_task(threads: int, *args) -> dict:
    """`evaluate_policy(*args)` with torch on the task's `threads` CPU threads."""
    import torch

    torch.set_num_threads(threads)
    return evaluate_policy(*args)


# --- the NP-BTL → NP-DPO chain ----------------------------------------------------------------


def encoder_job(job: PolicyJobConfig) -> RewardJobConfig:
    """The NP-BTL job of `job.policy.encoder_job`, on the policy's data and dimensions."""
    path, p = job.policy.encoder_job, job.policy
    own = load_tree(path)
    tree = merge_trees(
        {
            "data": job.data.model_dump(mode="json"),
            "train": job.train.model_dump(mode="json"),
            "eval": {"context_sizes": job.eval.context_sizes, "seed": job.eval.seed},
        },
        own,
    )
    # Scored on the policy's split, whatever its own YAML says: while settings are chosen on
    # validation, the chain never reads the test split.
    tree["eval"]["split"] = job.eval.split
    tree["run"] = {"name": f"{job.run.name}-npbtl", "output_dir": job.run.output_dir}
    tree["models"] = ["npbtl"]
    dims = {
        "hidden_dim": p.hidden_dim,
        "latent_dim": p.latent_dim,
        "aggregation": p.aggregation,
        "latent": p.latent,
    }
    tree["model"] = {**tree.get("model", {}), **dims}
    return validate_config(tree, RewardJobConfig, f"{path} (policy.encoder_job)")


def needs_encoder(job: PolicyJobConfig) -> bool:
    """An NP-BTL is to be trained first: the job names one, none is given, and a model reads z."""
    reads_z = any(POLICY_MODELS[m].use_latent for m in job.models if m in POLICY_MODELS)
    return bool(job.policy.encoder_job) and not job.policy.encoder_init and reads_z


ENCODER_KEYS = ("policy.hidden_dim", "policy.latent_dim", "policy.aggregation", "policy.latent")


def encoder_keys(job: PolicyJobConfig) -> tuple[str, ...]:
    """The policy recipe's `prepared_keys`: the trained encoder fixes z's encoder dimensions."""
    return ENCODER_KEYS if needs_encoder(job) else ()


def with_trained_encoder(job: PolicyJobConfig) -> tuple[PolicyJobConfig, dict[str, Run]]:
    """The policy recipe's `prepare`: when `job` names an `encoder_job` and no `encoder_init`,
    `job` with `policy.encoder_init` set to a freshly trained NP-BTL, and {"npbtl": its run};
    else `job` unchanged and {}."""
    if not needs_encoder(job):
        return job, {}
    encoder = run_recipe(encoder_job(job), REWARD)
    policy = job.policy.model_copy(update={"encoder_init": encoder.results["npbtl"]["checkpoint"]})
    return job.model_copy(update={"policy": policy}), {"npbtl": encoder}


POLICY = Recipe(
    name="policy",
    schema=PolicyJobConfig,
    models=POLICY_MODELS,
    oracle_model="dpo",
    plot_file="implicit_accuracy.png",
    prepare=with_trained_encoder,
    prepared_keys=encoder_keys,
    load=load_splits,
    fit=fit,
    evaluate=evaluate,
)
