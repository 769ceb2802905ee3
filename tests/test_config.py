import pytest

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
