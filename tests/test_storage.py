"""Locations in cloud storage, on a real S3-compatible server (conftest's `bucket`); a whole job
run in a bucket is tests/test_cluster_job.py."""

import pickle
from pathlib import Path

import pytest

from npalign.files import Location, write_json


def test_a_location_on_s3_reads_writes_joins_and_travels(bucket, tmp_path):
    folder = Location(bucket) / "unit"
    assert folder.remote and str(folder).startswith("s3://npalign/runs/unit?endpoint_override=")
    write_json(folder / "sub" / "a.json", {"x": 1})
    assert (folder / "sub" / "a.json").read_text().strip().startswith("{")
    assert (folder / "sub").is_dir() and not (folder / "nothing.json").exists()
    again = pickle.loads(pickle.dumps(folder / "sub" / "a.json"))  # as Ray ships it
    assert (
        again == folder / "sub" / "a.json"
        and again.read_text() == (folder / "sub" / "a.json").read_text()
    )
    with (folder / "sub" / "a.json").local_copy() as local:
        assert local.read_text() == (folder / "sub" / "a.json").read_text()
    assert not local.exists()  # the download is gone after the block
    with pytest.raises(TypeError, match="not on this machine"):
        Path(folder)
    assert Location(tmp_path) / "x" == Location(tmp_path / "x")


def test_a_reward_model_loads_from_a_bucket_as_from_disk(bucket, tmp_path):
    import torch
    from conftest import upload_folder

    from npalign.config import ModelConfig
    from npalign.models.reward import build_reward_model, load_reward_model, save_reward_model

    model = ModelConfig(hidden_dim=16, latent_dim=8)
    local = tmp_path / "reward"
    weights = build_reward_model("npbtl", model, 384).state_dict()
    save_reward_model(local, "npbtl", model, 384, weights)
    uri = upload_folder(local, bucket.replace("/runs?", "/storage/reward?"))
    here, there = load_reward_model(local).state_dict(), load_reward_model(uri).state_dict()
    assert set(here) == set(there) and all(torch.equal(here[k], there[k]) for k in here)
    with pytest.raises(FileNotFoundError):
        load_reward_model(bucket.replace("/runs?", "/storage/nothing?"))
