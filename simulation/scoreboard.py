"""The simulation's ground truth, kept off the production path.

Real card traffic arrives without labels, so the producers put their transactions into Kinesis without
``is_fraud`` / ``fraud_scenario`` and report each batch's truth (transaction_id → scenario) to the ``Scoreboard``
actor instead. The scoreboard follows the decisions stream, the system's own output, and joins each decision to
its truth by transaction_id: what the dashboard shows about how well the system detects the simulated fraud.

Memory is bounded: the newest ``max_truths`` ids (older ones are evicted; their decisions were joined long before),
the newest ``SAMPLES_PER_CLASS`` joined decisions per ground-truth class, and counters per scenario.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import orjson
import ray

from cluster.aws import client
from cluster.config import Settings
from cluster.kinesis import lines, pages, shard_iterator
from cluster.runtime import ACTOR_NAMESPACE
from cluster.schema import GENUINE_SCENARIO

log = logging.getLogger(__name__)

MAX_TRUTHS = 200_000  # transaction ids whose truth is kept, newest first
SAMPLES_PER_CLASS = 2_000  # joined decisions kept per ground-truth class for the score distribution
RATE_WINDOW_S = 60.0  # the true fraud rate is over the last minute, as the stats actor's flagged share
POLL_S = 1.0  # a round over the decisions stream's shards this often
TRUTH_CLASSES = ("genuine", "fraud")
NO_TRUTH: dict[str, Any] = {
    "window": {"labelled": 0, "truly_fraud": 0},
    "scenarios": {},
    "samples": {name: [] for name in TRUTH_CLASSES},
    "alert_scenarios": {},
}


def truth_class(scenario: str) -> str:
    return "genuine" if scenario == GENUINE_SCENARIO else "fraud"


class Scoreboard:
    """Truth by transaction_id, joined with the decisions stream (run it as a Ray actor: ``start_scoreboard``)."""

    def __init__(
        self,
        settings: Settings,
        *,
        max_truths: int = MAX_TRUTHS,
        since: datetime | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.kinesis = client("kinesis", settings)
        self.stream = settings.decisions_stream_name
        self.max_truths = max_truths
        self.since = since or datetime.now(timezone.utc)  # older decisions came before any truth reported here
        self.clock = clock
        self.positions: dict[str, str] = {}  # shard -> sequence number of the last record joined
        self.truths: OrderedDict[str, list[Any]] = OrderedDict()  # transaction_id -> [scenario, joined yet]
        self.scenarios: dict[str, dict[str, int]] = {}
        self.samples: dict[str, deque[dict[str, Any]]] = {
            name: deque(maxlen=SAMPLES_PER_CLASS) for name in TRUTH_CLASSES
        }
        self.recent: deque[tuple[float, int, int]] = deque()  # (monotonic time, joined, truly fraud) per join
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def report(self, transaction_ids: Sequence[str], scenarios: Sequence[str]) -> None:
        """A producer's batch: each transaction's scenario (``none`` for genuine), before it enters Kinesis."""
        with self._lock:
            for transaction_id, scenario in zip(transaction_ids, scenarios):
                self.truths[transaction_id] = [str(scenario), False]
            while len(self.truths) > self.max_truths:
                self.truths.popitem(last=False)

    def truth_of(self, transaction_ids: Sequence[str]) -> dict[str, str]:
        """The scenario of each of ``transaction_ids`` still known here."""
        with self._lock:
            return {tid: self.truths[tid][0] for tid in transaction_ids if tid in self.truths}

    def join(self, decisions: Sequence[dict[str, Any]]) -> int:
        """Count decisions against their truth; returns how many joined. Decisions of transactions the simulation
        did not make (or evicted) are left out, and so is a decision repeated by a replay."""
        joined = fraud = 0
        with self._lock:
            for decision in decisions:
                truth = self.truths.get(decision["transaction_id"])
                if truth is None or truth[1]:
                    continue
                truth[1] = True
                scenario, flagged = truth[0], bool(decision["is_fraud"])
                counts = self.scenarios.setdefault(scenario, {"seen": 0, "flagged": 0})
                counts["seen"] += 1
                counts["flagged"] += flagged
                kind = truth_class(scenario)
                self.samples[kind].append(
                    {
                        "fraud_score": decision["fraud_score"],
                        "risk_level": decision["risk_level"],
                        "is_fraud": flagged,
                        "scenario": scenario,
                    }
                )
                joined += 1
                fraud += kind == "fraud"
            now = self.clock()
            if joined:
                self.recent.append((now, joined, fraud))
            self._trim(now)
        return joined

    def _trim(self, now: float) -> None:
        while self.recent and self.recent[0][0] < now - RATE_WINDOW_S:
            self.recent.popleft()

    def poll(self) -> int:
        """One round over every shard of the decisions stream, from where the last round stopped; returns how many
        decisions joined."""
        joined = 0
        for shard in self.kinesis.list_shards(StreamName=self.stream)["Shards"]:
            shard_id = shard["ShardId"]
            after = self.positions.get(shard_id)
            iterator = shard_iterator(
                self.kinesis, self.stream, shard_id, after=after, since=None if after else self.since
            )
            for page in pages(self.kinesis, iterator):
                joined += self.join([orjson.loads(line) for record in page for line in lines(record["Data"])])
                self.positions[shard_id] = page[-1]["SequenceNumber"]
        return joined

    def run(self, every_s: float = POLL_S) -> None:
        """Follow the decisions stream until stopped."""
        while not self._stop.wait(every_s):
            try:
                self.poll()
            except Exception:  # a failed round (the endpoint restarting) resumes from its last position next time
                log.exception("scoreboard round over %s failed", self.stream)

    def stop(self) -> None:
        self._stop.set()

    def view(self, alert_ids: Sequence[str] = ()) -> dict[str, Any]:
        """What the dashboard shows from ground truth (the shape of ``NO_TRUTH``): last-minute joined and truly
        fraudulent decisions, seen / flagged per scenario, the score samples per class, and the scenario of each
        of ``alert_ids`` that the simulation made."""
        with self._lock:
            self._trim(self.clock())
            return {
                "window": {
                    "labelled": sum(entry[1] for entry in self.recent),
                    "truly_fraud": sum(entry[2] for entry in self.recent),
                },
                "scenarios": {name: dict(counts) for name, counts in self.scenarios.items()},
                "samples": {name: list(rows) for name, rows in self.samples.items()},
                "alert_scenarios": {tid: self.truths[tid][0] for tid in alert_ids if tid in self.truths},
            }


def scoreboard_name(settings: Settings) -> str:
    return f"scoreboard-{settings.decisions_stream_name}"


def start_scoreboard(settings: Settings) -> Any:
    """The scoreboard actor of ``settings``' decisions stream, following it from now on (stop it with
    ``stop_scoreboard``; it ends with the job that started it)."""
    handle = (
        ray.remote(Scoreboard)
        .options(
            name=scoreboard_name(settings), namespace=ACTOR_NAMESPACE, num_cpus=0, max_concurrency=4, max_restarts=0
        )
        .remote(settings)
    )
    handle.run.remote()
    return handle


def stop_scoreboard(handle: Any) -> None:
    handle.stop.remote()
    ray.kill(handle)
