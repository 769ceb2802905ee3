from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_has_what_the_launcher_requires():
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    for key in (
        "cluster_name",
        "provider",
        "auth",
        "available_node_types",
        "head_node_type",
        "max_workers",
        "setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    ):
        assert key in config, key
    assert config["provider"]["type"]
    nodes = config["available_node_types"]
    assert config["head_node_type"] in nodes
    gpu_nodes = [n for n in nodes.values() if n.get("resources", {}).get("GPU", 0) > 0]
    assert gpu_nodes, "training runs on GPU workers"
    for node in gpu_nodes:
        assert node["min_workers"] < node["max_workers"], "GPU workers autoscale"
        assert node["max_workers"] <= config["max_workers"]
    for node in nodes.values():
        assert "node_config" in node and "resources" in node
    setup = " ".join(config["setup_commands"])
    assert "pip install" in setup and "-e ~/npalign" in setup
    assert any("--head" in c for c in config["head_start_ray_commands"])


def test_cluster_yaml_validates_against_rays_schema():
    import json

    import jsonschema
    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    jsonschema.validate(yaml.safe_load((ROOT / "cluster.yaml").read_text()), schema)
