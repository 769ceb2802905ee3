"""Run folders in cloud storage: a real S3-compatible server (moto's server mode) on 127.0.0.1,
started by the test; the reward job writes its whole run folder there, Ray Train its
checkpoints, and nothing of the run lands on local disk."""

import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from npalign.files import Location, write_json

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bucket():
    """An S3 bucket on a local moto server; the URI of a folder in it."""
    import boto3

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline, "moto_server did not start"
                time.sleep(0.2)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket="npalign"
        )
        yield f"s3://npalign/runs?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    finally:
        server.terminate()
        server.wait()


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
    with (folder / "sub").local_copy() as local:
        assert (local / "a.json").exists()
    assert not local.exists()  # the download is gone after the block
    with pytest.raises(TypeError, match="not on this machine"):
        Path(folder)
    assert Location(tmp_path) / "x" == Location(tmp_path / "x")


@pytest.mark.ray
def test_the_reward_job_keeps_its_whole_run_folder_in_s3(ray_cluster, bucket, tmp_path, capsys):
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("train_reward", ROOT / "jobs/train_reward.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    argv = [
        "--config",
        str(ROOT / "configs/synthetic.yaml"),
        f"run.output_dir={bucket}",
        "models=[npbtl]",
        "data.synthetic.num_pairs=1000",
        "data.train_episodes=1280",
        "data.val_episodes=128",
        "model.hidden_dim=32",
        "train.epochs=1",
        "eval.num_episodes=100",
    ]
    assert job.main(argv) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    folder = Location(printed.removeprefix("run folder: "))
    assert folder.remote and folder.path.startswith("npalign/runs/synthetic-")
    for name in ("config.yaml", "metrics.json", "table.txt", "accuracy.png"):
        assert (folder / name).exists(), name
    assert (folder / "episodes" / "train.parquet").exists()
    npbtl = json.loads((folder / "metrics.json").read_text())["results"]["npbtl"]
    checkpoint = Location(npbtl["checkpoint"])  # Ray Train wrote it into the bucket
    assert checkpoint.remote and (checkpoint / "deepspeed").is_dir()
    assert set(npbtl["average"]) == {"0", "1", "3", "5", "10"}  # scored from the bucket
    assert not list(tmp_path.iterdir())

    # the run goes on (here: is read back) from the bucket alone
    assert job.main(["--resume", str(folder)]) == 0
    again = json.loads((folder / "metrics.json").read_text())["results"]["npbtl"]
    assert again["average"] == npbtl["average"]
