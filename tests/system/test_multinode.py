"""Several Ray nodes (a head and two workers on this machine): consumers, Serve replicas and feature-state partitions
spread over the nodes, and losing the worker node holding a feature-state partition (and a consumer) mid-stream loses
no transaction, repeats no alert and no window: the state comes back from its snapshot and the stream's replay, and a
later transaction of a card seen before the loss gets the features of an uninterrupted run; the API keeps answering.

The cluster needs a Ray of its own, so the scenario (tests/multinode.py) runs in a child process against this
session's embedded AWS; the outputs (decision stream, alert ledger, alert messages) are checked here, over HTTP.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cluster.aws import bootstrap, client
from cluster.config import Settings
from cluster.feature_state import OnlineFeatures, snapshot_folder
from cluster.features import FEATURE_NAMES
from cluster.kinesis import read_stream
from cluster.waiting import free_port
from tests.multinode import probe_row
from tests.streams import drain_alerts, subscribe_alert_queue
from tests.system.test_stream import ledger_ids, stream_settings
from training.registry import registry_for

ROOT = Path(__file__).resolve().parents[2]
SCENARIO_TIMEOUT_S = 300
TAG = "multinode"


def run_scenario(settings: Settings, frame: pd.DataFrame, workdir: Path) -> dict[str, Any]:
    """Run tests/multinode.py with these settings; its result, or a failure showing the end of its log.

    The child leads its own process group, which holds every Ray process it starts: after a SIGTERM (timeout) it
    gets a minute to stop its cluster, then whatever is left of the group is killed.
    """
    frame_path, result_path, log_path = workdir / "frame.parquet", workdir / "result.json", workdir / "scenario.log"
    frame.to_parquet(frame_path)
    ray_tmp = tempfile.mkdtemp(prefix="fraud-mn-")  # short: Ray's socket paths must stay under 108 characters
    env = {key: value for key, value in os.environ.items() if not key.startswith("FRAUD_") and key != "RAY_ADDRESS"}
    env.update(settings.as_env(), RAY_TMPDIR=ray_tmp)
    try:
        with log_path.open("wb") as log:
            child = subprocess.Popen(
                [sys.executable, "-m", "tests.multinode", str(frame_path), str(result_path)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                code: int | None = child.wait(timeout=SCENARIO_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                child.terminate()
                try:
                    child.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    pass
                code = None
            finally:
                try:
                    os.killpg(child.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                child.wait()
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    log_tail = log_path.read_text(errors="replace")[-6000:]
    outcome = f"timed out after {SCENARIO_TIMEOUT_S} s" if code is None else f"exited with {code}"
    assert code == 0, f"the multi-node scenario {outcome}:\n{log_tail}"
    return json.loads(result_path.read_text())


def fraud_heavy_traffic(history: Any, users: int, heavy_rows: int, other_rows: int) -> pd.DataFrame:
    """The latest rows of the first users with a fraud (so that some decisions are HIGH and the alert checks have
    something to check) and of everyone else (so that every shard gets records), in time order, labels included as
    the simulator sends them; ids made unique to this test."""
    transactions = history.transactions
    chosen = transactions["user_id"].isin(transactions.loc[transactions["is_fraud"] == 1, "user_id"].unique()[:users])
    frame = pd.concat([transactions[chosen].tail(heavy_rows), transactions[~chosen].tail(other_rows)])
    frame = frame.sort_values("timestamp", kind="stable").reset_index(drop=True)
    frame["transaction_id"] = [f"{TAG}-{i}" for i in range(len(frame))]
    return frame


def test_consumers_and_replicas_spread_over_nodes_and_losing_a_worker_loses_nothing(
    ray_session, champion_model, small_history, tmp_path
) -> None:
    settings = stream_settings(ray_session, shards=4).model_copy(
        update={
            "stream_shards": 4,
            "api_port": free_port(),
            "serve_haproxy": False,
            "model_bucket": f"models-{TAG}",
            "ingest_stream_name": f"ingest-{TAG}-{uuid.uuid4().hex[:8]}",
            "feature_state_name": f"state-{TAG}",
            "feature_partitions": 2,
        }
    )
    # a bucket, an ingest stream and a state name of its own: the cluster's feature state never reads or snapshots
    # over the session's; two partitions, spread over the nodes, so a worker holds one
    bootstrap(settings)
    registry_for(settings).register(registry_for(ray_session).load("champion"), promote=True)
    frame = fraud_heavy_traffic(small_history, users=12, heavy_rows=400, other_rows=200)
    queue_url = subscribe_alert_queue(settings, f"alerts-{TAG}-{free_port()}")
    result = run_scenario(settings, frame, tmp_path)
    victim, before, after = result["victim"], result["before"], result["after"]
    summary = json.dumps(result, indent=1)

    assert len(before["consumers"]) == 4 and len(set(before["consumers"].values())) > 1, summary
    replica_nodes = {node for nodes in before["replicas"].values() for node in nodes}
    assert "Ingress" in before["replicas"] and len(before["replicas"]) > 1, summary
    assert len(replica_nodes) > 1, f"Serve replicas on one node only: {summary}"
    assert victim in result["nodes"]["workers"] and victim in before["consumers"].values(), summary
    assert victim in before["feature_state"].values(), f"the removed node held no feature-state partition: {summary}"
    assert result["api_before_removal"]["status"] == 200, summary

    lost_shards = {shard for shard, node in before["consumers"].items() if node == victim}
    assert set(after["consumers"]) == set(before["consumers"]), "every shard has a live consumer again"
    assert victim not in after["consumers"].values(), summary
    assert set(after["replicas"]) == set(before["replicas"]), "every deployment has its replicas again"
    assert victim not in {node for nodes in after["replicas"].values() for node in nodes}, summary
    assert result["restarts"] >= len(lost_shards), "the supervisor resumed the consumers the node took down"

    decisions = read_stream(settings, settings.decisions_stream_name)
    decided = {d["transaction_id"] for d in decisions}
    assert decided == set(frame["transaction_id"]), "exactly N distinct decisions: none lost, none invented"
    champion = registry_for(settings).resolve("champion")
    assert all(0.0 <= d["fraud_score"] <= 1.0 and d["model_version"] == champion for d in decisions)
    high = {d["transaction_id"] for d in decisions if d["risk_level"] == "HIGH"}
    assert high, "the fraud-heavy traffic produced no HIGH decision"
    assert sorted(ledger_ids(settings, f"{TAG}-")) == sorted(high)
    alerts = [
        message["transaction"]["transaction_id"]
        for message in drain_alerts(settings, queue_url)
        if message["transaction"]["transaction_id"].startswith(f"{TAG}-")
    ]
    assert sorted(alerts) == sorted(high), "one alert per HIGH transaction, none repeated by the replay"

    answer = result["api_after_removal"]
    assert answer["status"] == 200, summary
    body = answer["body"]
    assert body["transaction_id"] == "api-check-after-node-loss" and 0.0 <= body["fraud_score"] <= 1.0
    assert body["risk_level"] in {"LOW", "MEDIUM", "HIGH"} and body["model_version"] == champion
    assert result["stats_after_removal"] == 200, "GET /api/stats answers too"

    # the lost partition came back with its windows, from the cluster's own snapshots (its bucket, its state name)
    assert set(after["feature_state"]) == {f"state-{TAG}-0", f"state-{TAG}-1"}, summary
    assert victim not in after["feature_state"].values(), summary
    state_before, state_after = result["state_before_removal"], result["state_after_removal"]
    assert state_after["recoveries"] >= 1 and state_after["replayed"] > 0, summary
    assert state_after["keys"]["user"] >= state_before["keys"]["user"] > 0, "the windows were not reset"
    assert state_after["rows"] >= state_before["rows"], summary
    s3 = client("s3", settings)
    folder = snapshot_folder(settings.feature_state_name)
    ours = s3.list_objects_v2(Bucket=settings.model_bucket, Prefix=f"{folder}/").get("Contents", [])
    assert sorted(o["Key"] for o in ours) == [f"{folder}/0-of-2.npz.zst", f"{folder}/1-of-2.npz.zst"]
    assert not s3.list_objects_v2(Bucket=ray_session.model_bucket, Prefix=f"{folder}/").get("KeyCount")

    # the probe (one more transaction of the frame's last card) read the windows an uninterrupted run has
    unlabelled = frame.drop(columns=["is_fraud", "fraud_scenario"])
    last = unlabelled.tail(1).reset_index(drop=True)
    sequence = [
        last.assign(transaction_id="api-check-before-node-loss"),
        unlabelled,
        last.assign(transaction_id="api-check-after-node-loss"),
        probe_row(frame),
    ]
    reference = OnlineFeatures(ray_session, name=f"{TAG}-reference", partitions=1, restore=False)
    try:
        want = [reference.compute(part) for part in sequence][-1]
    finally:
        reference.shutdown()
    got = result["probe_features"]
    np.testing.assert_allclose(
        [got[name] for name in FEATURE_NAMES], want[list(FEATURE_NAMES)].to_numpy()[0], rtol=1e-6, atol=1e-6
    )
    assert got["user_count_1h"] >= 3, "the card's transactions before and after the loss count in its hour"
