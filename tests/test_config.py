import pytest
from pydantic import ValidationError

from npalign.config import ConfigError, RewardJobConfig, load_config


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 2\n")
    config = load_config(path, ["train.lr=3e-4", "models=[npbtl]", "model.aggregation=attention"])
    assert isinstance(config, RewardJobConfig)
    assert config.train.epochs == 2
    assert config.train.lr == pytest.approx(3e-4)
    assert config.models == ["npbtl"]
    assert config.model.aggregation == "attention"


def test_unknown_key_names_file_and_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochz: 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value)
    assert "train.epochz" in str(e.value)


def test_wrong_type_names_field():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.batch_size=lots"])
    assert "train.batch_size" in str(e.value)


def test_inconsistent_context_range():
    with pytest.raises(ConfigError, match="min_context"):
        load_config(None, ["data.min_context=5", "data.max_context=3"])


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.lr"])


def test_deepspeed_settings_pass_through_and_wrong_ones_fail_before_any_run():
    from npalign.train.deepspeed import check_deepspeed_config

    config = load_config(
        None,
        [
            "train.zero_stage=3",
            "train.offload=optimizer_and_params",
            "train.gradient_accumulation_steps=4",
            "train.deepspeed={zero_optimization: {stage3_max_live_parameters: 1000}}",
        ],
    )
    built = check_deepspeed_config(config.train)
    zero = built["zero_optimization"]
    assert zero["stage3_max_live_parameters"] == 1000 and zero["stage"] == 3
    assert zero["offload_optimizer"]["device"] == zero["offload_param"]["device"] == "cpu"
    assert built["train_micro_batch_size_per_gpu"] == 64 // (2 * 4)

    typo = config.train.model_copy(
        update={"deepspeed": {"zero_optimization": {"stage3_max_live_paramters": 1}}}
    )
    with pytest.raises(ConfigError, match="(?s)train.deepspeed.*stage3_max_live_paramters"):
        check_deepspeed_config(typo)
    with pytest.raises(ConfigError, match="train_batch_size come from train"):
        load_config(None, ["train.deepspeed={train_batch_size: 8}"])
    with pytest.raises(ConfigError, match="bf16, zero_optimization.stage come from train"):
        load_config(
            None, ["train.deepspeed={bf16: {enabled: true}, zero_optimization: {stage: 1}}"]
        )
    with pytest.raises(ConfigError, match="needs zero_stage 3"):
        load_config(None, ["train.offload=optimizer_and_params"])
    with pytest.raises(ConfigError, match="num_workers x gradient_accumulation_steps"):
        load_config(None, ["train.batch_size=6", "train.gradient_accumulation_steps=2"])


def test_an_endpoint_reachable_from_other_machines_needs_tokens(monkeypatch):
    from npalign.config import ServeConfig

    monkeypatch.delenv("NPALIGN_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("NPALIGN_USER_TOKENS", raising=False)
    with pytest.raises(ValidationError, match="no token is set"):
        ServeConfig(policy="p", host="0.0.0.0")
    with pytest.raises(ValidationError, match="set allowed_hosts"):
        ServeConfig(policy="p", host="0.0.0.0", allow_unauthenticated=True)
    behind_gateway = ServeConfig(
        policy="p", host="0.0.0.0", allow_unauthenticated=True, allowed_hosts=["NPalign.example"]
    )
    assert behind_gateway.allowed_hosts == ["npalign.example"]
    assert ServeConfig(policy="p").allowed_hosts == ["127.0.0.1", "::1", "localhost"]
    for bad in ("short", "x" * 15, "é" * 20, "two words but long enough"):
        with pytest.raises(ValidationError, match="at least 16 printable ASCII"):
            ServeConfig(policy="p", admin_token=bad)
    with pytest.raises(ValidationError, match="at least 16 printable ASCII"):
        ServeConfig(policy="p", user_tokens={"ann": ""})

    monkeypatch.setenv("NPALIGN_ADMIN_TOKEN", "a" * 16)
    monkeypatch.setenv("NPALIGN_USER_TOKENS", '{"ann": "' + "b" * 16 + '"}')
    from_env = ServeConfig(policy="p", host="0.0.0.0", allowed_hosts=["npalign.example"])
    assert from_env.admin_token == "a" * 16 and from_env.user_tokens == {"ann": "b" * 16}
    monkeypatch.setenv("NPALIGN_USER_TOKENS", '["not", "an", "object"]')
    with pytest.raises(ValidationError, match="JSON object"):
        ServeConfig(policy="p")


def test_the_store_url_names_a_registered_backend():
    from npalign.config import ServeConfig

    assert ServeConfig(policy="p", store="postgresql://u@127.0.0.1:5432/db").store
    with pytest.raises(ValidationError, match="unknown user store 'mysql'"):
        ServeConfig(policy="p", store="mysql://u@127.0.0.1/db")


def test_the_endpoint_carries_backpressure_and_pinning_to_serve():
    from npalign.config import ServeConfig
    from npalign.serving import build_app

    config = ServeConfig(
        policy="p", max_queued_requests=5, retry_after_s=2, replica_resources={"node_b": 0.1}
    )
    deployment = build_app(config)._bound_deployment
    assert deployment.max_queued_requests == 5
    assert deployment.backpressure_config.retry_after_s == 2
    assert deployment.ray_actor_options["resources"] == {"node_b": 0.1}
    assert deployment.ray_actor_options["num_gpus"] == 0
    assert "accelerator_type" not in deployment.ray_actor_options

    on_gpus = ServeConfig(policy="p", gpus_per_replica=0.5, accelerator_type="L4")
    options = build_app(on_gpus)._bound_deployment.ray_actor_options
    assert options["num_gpus"] == 0.5 and options["accelerator_type"] == "L4"


def test_a_float32_training_keeps_the_policy_base_in_float32():
    from npalign.config import PolicyJobConfig

    assert load_config(None, ["train.bf16=false"], PolicyJobConfig).policy.dtype == "float32"
    assert load_config(None, [], PolicyJobConfig).policy.dtype == "auto"


def test_worker_resources_are_custom_ones_in_amounts_ray_takes():
    from npalign.config import TrainConfig

    assert TrainConfig(worker_resources={"npalign_trainer": 1}).worker_resources == {
        "npalign_trainer": 1
    }
    for bad in ({"GPU": 1}, {"CPU": 2}, {"node": 0}, {"node": 1.5}):
        with pytest.raises(ValueError, match="worker_resources"):
            TrainConfig(worker_resources=bad)
