"""The reward job as a cluster runs it: submitted with jobs/submit.py to the session cluster's job
server from a checkout whose library was edited (the installed copy was not), its training
workers placed on a second node by a custom resource, and its whole run folder, Ray Train's
checkpoints included, in a real S3-compatible server (conftest's `bucket`). The job's driver and
its workers both run the edited library, and the checkout's environment, outputs and local
datasets (.venv/, runs/, data/) are not shipped."""

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


# The job's entrypoint: what its driver sees, then the reward job itself.
PROBE = """
import os
import runpy
import sys

import npalign
import npalign.data.episodes  # a subpackage named like the checkout's excluded data/

print("left out:", not any(os.path.exists(name) for name in (".venv", "runs", "data")))
print("driver:", npalign.EDITED, npalign.__file__)
sys.argv = ["jobs/train_reward.py", *sys.argv[1:]]
runpy.run_path("jobs/train_reward.py", run_name="__main__")
"""


def edited_checkout(folder: Path, marker: str) -> Path:
    """A checkout (library, jobs, configs, the probe) with the edits above in its library only,
    and an environment, outputs and a dataset that must stay behind."""
    for part in ("platform/npalign", "jobs", "configs"):
        shutil.copytree(ROOT / part, folder / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".gitignore", folder / ".gitignore")
    (folder / "probe.py").write_text(PROBE)
    with open(folder / "platform/npalign/__init__.py", "a") as init:
        init.write(f"\nEDITED = {marker!r}\n")
    loop = folder / "platform/npalign/train/loop.py"
    code = loop.read_text()
    assert code.count(STATE_LINE) == 1, "train/loop.py no longer writes the train state this way"
    loop.write_text(code.replace(STATE_LINE, EDITED_LINE.replace("MARKER", repr(marker))))
    for ignored in (".venv", "runs", "data"):
        (folder / ignored).mkdir()
        (folder / ignored / "big.bin").write_bytes(b"0" * 1000)
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
        *[sys.executable, "probe.py", "--config", "configs/synthetic.yaml"],
        f"run.output_dir={bucket}",
        "models=[npbtl]",
        "data.synthetic.num_pairs=1000",
        "data.train_episodes=640",
        "data.val_episodes=64",
        "model.hidden_dim=32",
        "train.epochs=1",
        "train.worker_resources={npalign_trainer: 1}",
        "eval.context_sizes=[0,3]",
        "eval.num_episodes=50",
    ]
    argv = ["--address", ray_nodes.dashboard_url, "--root", str(checkout), "--", *reward_job]
    try:
        assert submit.main(argv) == 0, capsys.readouterr().out[-3000:]
        printed = capsys.readouterr().out.strip().splitlines()
        driver = next(line for line in printed if line.startswith("driver:"))
        assert marker in driver and str(ROOT) not in driver  # not the installed library
        assert "left out: True" in printed
        folder = Location(next(line for line in printed if line.startswith("run folder: "))[12:])
        assert folder.remote and folder.path.startswith("npalign/runs/synthetic-")
        for name in ("config.yaml", "metrics.json", "table.txt", "accuracy.png"):
            assert (folder / name).exists(), name
        assert (folder / "episodes" / "train.parquet").exists()
        npbtl = json.loads((folder / "metrics.json").read_text())["results"]["npbtl"]
        checkpoint = Location(npbtl["checkpoint"])  # Ray Train wrote it into the bucket
        assert checkpoint.remote and (checkpoint / "deepspeed").is_dir()
        assert set(npbtl["average"]) == {"0", "3"}  # scored from the bucket
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
