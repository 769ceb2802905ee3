"""Registries: a new reward model or data source is one registration, and every config and
entrypoint that names models or sources sees it; unknown names are errors that list the known."""

import subprocess
import sys

import numpy as np
import pytest
import ray.cloudpickle
import torch.nn.functional as F
from torch import nn

from npalign.config import ConfigError, PolicyJobConfig, RewardJobConfig, SweepConfig, load_config
from npalign.data.preferences import PairTable
from npalign.data.sources import DataSource
from npalign.models.reward import PreferenceOutput
from npalign.registry import DATA_SOURCES, REWARD_MODELS

# Ray Train's workers cannot import this test module: its classes travel to them by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@REWARD_MODELS.register("toy-linear")
class LinearReward(nn.Module):
    """r(x, y) = w · φ(x, y): the smallest reward model there is."""

    uses_context = False

    def __init__(self, feature_dim, config):
        super().__init__()
        self.feature_dim = feature_dim
        self.reward = nn.Linear(feature_dim, 1)

    def forward(self, batch):
        r_a = self.reward(batch.target_a).squeeze(-1)  # (batch, targets)
        r_b = self.reward(batch.target_b).squeeze(-1)
        return PreferenceOutput(F.logsigmoid(r_a - r_b), F.logsigmoid(r_b - r_a))


def bigger_is_better(data) -> dict[str, PairTable]:
    """Every user prefers the option with the larger single feature."""
    rng = np.random.default_rng(data.seed)
    out = {}
    for split, rows in (("train", 2000), ("val", 400), ("test", 400)):
        a, b = rng.uniform(size=(2, rows, 1)).astype(np.float32)
        users = np.array([f"u{i % 20}" for i in range(rows)], dtype=object)
        out[split] = PairTable(
            pair_id=np.array([f"{split}{i}" for i in range(rows)], dtype=object),
            prompt_id=np.array([f"{split}{i}" for i in range(rows)], dtype=object),
            features_a=a,
            features_b=b,
            user=users,
            user_type=np.array(["everyone"] * rows, dtype=object),
            choice=(b[:, 0] > a[:, 0]).astype(np.int8),
        )
    return out


DATA_SOURCES.register("toy-bigger")(
    DataSource(bigger_is_better, text=False, needs_path=False, description="1 feature, more wins")
)


def test_a_registered_model_and_source_are_valid_config_values():
    job = load_config(None, ["models=[toy-linear, oracle]", "data.source=toy-bigger"])
    assert job.models == ["toy-linear", "oracle"] and job.data.source == "toy-bigger"
    sweep = SweepConfig(base="b.yaml", model="toy-linear", space={"train.lr": {"grid": [0.1]}})
    assert sweep.model == "toy-linear"


def test_unknown_names_list_what_is_registered():
    with pytest.raises(ConfigError, match=r"unknown reward model 'bt'.*btl, dpl, npbtl"):
        load_config(None, ["models=[bt]"])
    with pytest.raises(ConfigError, match=r"unknown data source 'steeer'.*synthetic"):
        load_config(None, ["data.source=steeer"])
    with pytest.raises(ConfigError, match=r"unknown policy 'npbtl'.*npdpo, dpo"):
        load_config(None, ["models=[npbtl]"], PolicyJobConfig)
    with pytest.raises(ValueError, match="registered already"):
        REWARD_MODELS.register("btl")(LinearReward)


def test_a_config_validates_before_any_model_module_is_imported():
    """config.py imports no model: the registry imports its home module on first use."""
    code = (
        "import sys; from npalign.config import RewardJobConfig; "
        "assert 'npalign.models.reward' not in sys.modules and 'torch' not in sys.modules; "
        "RewardJobConfig(models=['npbtl']); assert 'npalign.models.reward' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_registered_model_trains_on_the_registered_source(ray_cluster, tmp_path):
    """One registration each is all it takes: the recipe's whole outline, Ray Train fit
    included, runs the toy model on the toy source."""
    from npalign.recipes.outline import run_recipe
    from npalign.recipes.reward import REWARD

    job = RewardJobConfig.model_validate(
        {
            "run": {"name": "toy", "output_dir": str(tmp_path)},
            "data": {
                "source": "toy-bigger",
                "max_context": 2,
                "num_targets": 8,
                "train_episodes": 3200,
                "val_episodes": 64,
            },
            "models": ["toy-linear"],
            "train": {"epochs": 1, "lr": 0.05, "batch_size": 32},
            "eval": {"context_sizes": [0, 2], "num_episodes": 100},
        }
    )
    run = run_recipe(job, REWARD)
    assert run.results["toy-linear"]["average"][0]["mean"] > 95
    assert (run.folder / "accuracy.png").exists()
