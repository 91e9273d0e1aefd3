"""ray-cluster.yaml passes Ray's own autoscaler config preparation and schema validation."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_cluster_yaml_is_valid_for_ray_up() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "ray-cluster.yaml").read_text())
    prepared = prepare_config(config)
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["node_config"]["IamInstanceProfile"]["Name"]
    assert prepared["docker"]["image"].startswith("rayproject/ray:")  # Ray's image: its Python and exact Ray
    assert any("pip install" in command and "-e ~/fraud-analytics" in command for command in prepared["setup_commands"])
    workers = [t for name, t in prepared["available_node_types"].items() if name != prepared["head_node_type"]]
    assert all(t["min_workers"] <= t["max_workers"] for t in workers)
