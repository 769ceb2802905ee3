"""The reward job as a cluster runs it: submitted with jobs/submit.py to the session cluster's job
server from a checkout whose library was edited (the installed copy was not), its training
workers placed on a second node by a custom resource, and its whole run folder, Ray Train's
checkpoints included, in a real S3-compatible server (conftest's `bucket`)."""

import importlib.util
import json
import shutil
import sys
import uuid
from pathlib import Path

import pytest

from npalign.files import Location

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.ray
# The edit: rank 0 also records, in every checkpoint's train state, a marker only the submitted
# copy has and the node it ran on.
STATE_LINE = 'write_json(Path(folder) / STATE_FILE, {**state, "metrics": metrics})'
EDITED_LINE = (
    'write_json(Path(folder) / STATE_FILE, {**state, "metrics": metrics, '
    '"edited": [MARKER, ray.get_runtime_context().get_node_id()]})'
)


def edited_checkout(folder: Path, marker: str) -> Path:
    """A checkout (library, jobs, configs) with the edit above in its library only."""
    for part in ("platform/npalign", "jobs", "configs"):
        shutil.copytree(ROOT / part, folder / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".gitignore", folder / ".gitignore")
    loop = folder / "platform/npalign/train/loop.py"
    code = loop.read_text()
    assert code.count(STATE_LINE) == 1, "train/loop.py no longer writes the train state this way"
    loop.write_text(code.replace(STATE_LINE, EDITED_LINE.replace("MARKER", repr(marker))))
    return folder


def test_a_submitted_reward_job_runs_the_edited_code_on_the_second_node_and_keeps_its_run_in_s3(
    ray_nodes, bucket, tmp_path, capsys
):
    second = ray_nodes.add_node(num_cpus=2, resources={"npalign_trainer": 2})
    ray_nodes.wait_for_nodes()
    marker = uuid.uuid4().hex
    checkout = edited_checkout(tmp_path / "checkout", marker)
    spec = importlib.util.spec_from_file_location("submit", ROOT / "jobs/submit.py")
    submit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(submit)
    reward_job = [
        *[sys.executable, "jobs/train_reward.py", "--config", "configs/synthetic.yaml"],
        f"run.output_dir={bucket}",
        "models=[npbtl]",
        "data.synthetic.num_pairs=1000",
        "data.train_episodes=1280",
        "data.val_episodes=128",
        "model.hidden_dim=32",
        "train.epochs=1",
        "train.worker_resources={npalign_trainer: 1}",
        "eval.num_episodes=100",
    ]
    argv = ["--address", ray_nodes.dashboard_url, "--root", str(checkout), "--", *reward_job]
    try:
        assert submit.main(argv) == 0, capsys.readouterr().out[-3000:]
        printed = capsys.readouterr().out.strip().splitlines()
        folder = Location(next(line for line in printed if line.startswith("run folder: "))[12:])
        assert folder.remote and folder.path.startswith("npalign/runs/synthetic-")
        for name in ("config.yaml", "metrics.json", "table.txt", "accuracy.png"):
            assert (folder / name).exists(), name
        assert (folder / "episodes" / "train.parquet").exists()
        npbtl = json.loads((folder / "metrics.json").read_text())["results"]["npbtl"]
        checkpoint = Location(npbtl["checkpoint"])  # Ray Train wrote it into the bucket
        assert checkpoint.remote and (checkpoint / "deepspeed").is_dir()
        assert set(npbtl["average"]) == {"0", "1", "3", "5", "10"}  # scored from the bucket
        state = json.loads((checkpoint / "train_state.json").read_text())
        assert state["edited"] == [marker, second.node_id]  # the edited code, on the second node

        # the run goes on (here: is read back) from the bucket alone
        spec = importlib.util.spec_from_file_location("job", ROOT / "jobs/train_reward.py")
        job = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(job)
        assert job.main(["--resume", str(folder)]) == 0
        again = json.loads((folder / "metrics.json").read_text())["results"]["npbtl"]
        assert again["average"] == npbtl["average"]
    finally:
        ray_nodes.remove_node(second)
