"""The multi-node scenario behind tests/system/test_multinode.py, in a process of its own: it needs its own Ray (a
head and two worker nodes on this machine, ``ray.cluster_utils.Cluster``) while the rest of the suite shares one
local Ray per session.

    python -m tests.multinode FRAME.parquet RESULT.json

Settings (the 4-shard streams, the parent's embedded AWS endpoint, a free API port) come from the FRAUD_*
environment; run it with RAY_TMPDIR set to a private folder so that no other Ray on the machine finds this cluster.
It starts the Serve app and stream scoring, produces FRAME's transactions around the removal of the worker node
hosting the most of the system (feature-state actors first, then consumers), waits until every transaction is
decided, calls the API again, computes the features of one more transaction of the frame's last card (a probe,
joining the recovered state), and writes what it saw (placements before and after, restarts, the API's answers, the
state's summary before and after, the probe's features) to RESULT. The test checks the outputs in AWS itself.
Whatever happens, stream scoring, Serve and every node started here are stopped (SIGTERM included).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import requests

from cluster.config import Settings, get_settings
from cluster.features import FEATURE_NAMES
from cluster.kinesis import to_entries
from cluster.waiting import wait_until
from tests.system.test_stream import produce, wait_for_decisions

NODE_CPUS = 1
CONSUMER_CPUS = 0.1
SETTLE_TIMEOUT_S = 90.0


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM (the test's timeout) takes the same path as a failure: every ``finally`` below runs."""
    raise SystemExit(f"stopped by signal {signum}")


def placements(settings: Settings) -> dict[str, Any]:
    """The node of every live consumer (by shard), Serve replica (by deployment), feature-state and stats actor.

    Read from the GCS actor table: ``ray.util.state`` would need the full dashboard, a dozen more processes here.
    """
    from ray._private.state import actors

    consumer_prefix = f"consumer-{settings.stream_name}-"
    found: dict[str, Any] = {"consumers": {}, "replicas": {}, "feature_state": {}, "stats": []}
    for actor in actors(actor_state_name="ALIVE").values():
        kind, name, node = actor["ActorClassName"], actor["Name"], actor["Address"]["NodeID"]
        if kind == "ShardConsumer" and name.startswith(consumer_prefix):
            found["consumers"][name.removeprefix(consumer_prefix)] = node
        elif kind.startswith("ServeReplica:"):
            found["replicas"].setdefault(kind.rsplit(":", 1)[1], []).append(node)
        elif kind == "FeatureStateActor":
            found["feature_state"][name] = node
        elif kind == "StatsCollector":
            found["stats"].append(node)
    return found


def settled(settings: Settings, gone: str, shards: int, replicas: dict[str, int]) -> dict[str, Any]:
    """Placements once every shard has a live consumer, every deployment its replicas and every feature-state
    partition its actor, none on the gone node."""
    seen: dict[str, Any] = {}

    def settled_now() -> dict[str, Any] | None:
        seen.update(placements(settings))
        nodes = [
            *seen["consumers"].values(),
            *(n for ns in seen["replicas"].values() for n in ns),
            *seen["feature_state"].values(),
        ]
        complete = (
            len(seen["consumers"]) == shards
            and gone not in nodes
            and len(seen["feature_state"]) == settings.feature_partitions
            and all(len(seen["replicas"].get(name, [])) >= count for name, count in replicas.items())
        )
        return dict(seen) if complete else None

    return wait_until(
        settled_now, timeout_s=SETTLE_TIMEOUT_S, interval_s=1.0, what=lambda: f"the cluster settled (last seen {seen})"
    )


def check_fraud(url: str, transaction: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """POST the transaction until it gets a 200 (or the time runs out); the last answer and how long it took."""
    began, answer = time.monotonic(), {}

    def answered() -> bool:
        try:
            response = requests.post(f"{url}/api/check-fraud", json=transaction, timeout=30)
            answer.update(status=response.status_code, body=response.json())
        except (requests.RequestException, ValueError) as exc:
            answer.update(status=None, body=repr(exc))
        answer["seconds"] = round(time.monotonic() - began, 1)
        return answer["status"] == 200

    try:
        wait_until(answered, timeout_s=timeout_s, interval_s=1.0, what="a 200 from /api/check-fraud")
    except TimeoutError:  # the caller asserts on the last answer
        pass
    return answer


def api_transaction(frame: pd.DataFrame, transaction_id: str) -> dict[str, Any]:
    """A canonical transaction for the API: the frame's last row under a new id, without the simulator's truth."""
    record = json.loads(to_entries(frame.tail(1))[0]["Data"])
    record.pop("is_fraud", None)
    record.pop("fraud_scenario", None)
    return {**record, "transaction_id": transaction_id}


def _hosted(seen: dict[str, Any], node: str) -> tuple[int, int, int]:
    """How much of the system a node hosts, the stateful parts first: feature-state actors, consumers, replicas."""
    return (
        sum(n == node for n in seen["feature_state"].values()),
        sum(n == node for n in seen["consumers"].values()),
        sum(n == node for nodes in seen["replicas"].values() for n in nodes),
    )


def probe_row(frame: pd.DataFrame) -> pd.DataFrame:
    """One more transaction of the frame's last card, a minute after it: its features read the card's windows."""
    row = frame.tail(1).drop(columns=["is_fraud", "fraud_scenario"], errors="ignore").reset_index(drop=True)
    return row.assign(
        transaction_id="state-probe-after-node-loss", timestamp=row["timestamp"] + pd.Timedelta(minutes=1)
    )


def score_through_node_loss(cluster: Any, settings: Settings, frame: pd.DataFrame) -> dict[str, Any]:
    """Serve + stream scoring on the cluster; a worker node removed while a backlog waits in its shards."""
    from ray import serve

    from cluster.feature_state import OnlineFeatures
    from serve.app import build_app
    from serve.runtime import serving
    from serve.stream import StreamScoring

    shards = settings.stream_shards
    quarter = len(frame) // 4
    warm, backlog, after = frame.iloc[:quarter], frame.iloc[quarter : 2 * quarter], frame.iloc[2 * quarter :]
    timings: dict[str, float] = {}
    began = time.monotonic()
    # one HTTP proxy, on the head: every node's proxy would share this machine's loopback port anyway
    serve.start(proxy_location="HeadOnly", http_options={"host": settings.api_host, "port": settings.api_port})
    with serving(settings, build_app(settings), name="fraud") as url:
        api_before = check_fraud(url, api_transaction(frame, "api-check-before-node-loss"), timeout_s=120)
        timings["serve_ready_s"] = round(time.monotonic() - began, 1)
        # only now: consumers starting beside Serve's proxy would starve it past its health checks
        stream = StreamScoring(settings, consumer_cpus=CONSUMER_CPUS, poll_shards_s=0.5).start()
        try:
            produce(settings, warm)
            wait_for_decisions(settings, set(warm["transaction_id"]), timeout_s=120)
            timings["stream_warm_s"] = round(time.monotonic() - began, 1)
            before = placements(settings)
            state_before = requests.get(f"{url}/api/state", timeout=30).json()
            victim_id = max((w.node_id for w in cluster.worker_nodes), key=lambda n: _hosted(before, n))
            victim = next(w for w in cluster.worker_nodes if w.node_id == victim_id)

            produce(settings, backlog)
            cluster.remove_node(victim)
            removed_at = time.monotonic()
            produce(settings, after)
            wait_for_decisions(settings, set(frame["transaction_id"]), timeout_s=150)
            timings["all_decided_after_removal_s"] = round(time.monotonic() - removed_at, 1)
            api_after = check_fraud(url, api_transaction(frame, "api-check-after-node-loss"), timeout_s=90)
            stats_status = requests.get(f"{url}/api/stats", timeout=30).status_code
            state_after = requests.get(f"{url}/api/state", timeout=30).json()
            probe = OnlineFeatures(settings, actor_cpus=0.1).compute(probe_row(frame))
            replica_counts = {name: len(nodes) for name, nodes in before["replicas"].items()}
            final = settled(settings, victim_id, shards, replica_counts)
            timings["settled_after_removal_s"] = round(time.monotonic() - removed_at, 1)
            status = stream.status()
            app_status = serve.status().applications["fraud"].status
        finally:
            stream.stop()
    return {
        "nodes": {
            "head": cluster.head_node.node_id,
            "workers": sorted([*(w.node_id for w in cluster.worker_nodes), victim_id]),
        },
        "victim": victim_id,
        "before": before,
        "after": final,
        "restarts": status["restarts"],
        "scored_by_shard": {shard: s.get("scored") for shard, s in status["shards"].items()},
        "api_before_removal": api_before,
        "api_after_removal": api_after,
        "stats_after_removal": stats_status,
        "app_status_after_removal": str(app_status),
        "state_before_removal": state_before,
        "state_after_removal": state_after,
        "probe_features": {name: float(probe[name].iloc[0]) for name in FEATURE_NAMES},
        "timings": timings,
    }


def main(frame_path: Path, result_path: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster

    signal.signal(signal.SIGTERM, _terminate)
    settings = get_settings()
    frame = pd.read_parquet(frame_path)
    began = time.monotonic()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": NODE_CPUS, "include_dashboard": False})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=NODE_CPUS)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, runtime_env={"env_vars": settings.as_env()}, configure_logging=False)
        cluster_up_s = round(time.monotonic() - began, 1)
        result = score_through_node_loss(cluster, settings, frame)
        result["timings"]["cluster_up_s"] = cluster_up_s
    finally:
        ray.shutdown()
        cluster.shutdown()
    result["timings"]["total_s"] = round(time.monotonic() - began, 1)
    result_path.write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
