"""Simulation actors that drive live traffic into Kinesis at a target aggregate rate.

Each ``TrafficProducer`` owns one partition of the simulated users and replays their simulated days in time
order. What enters Kinesis is what a card network would send, without labels: each batch's ground truth goes to
the simulation's scoreboard (``simulation/scoreboard.py``) first, so it is known before any decision on it.
The simulated clock runs faster than the wall clock (a simulated day of a few thousand users passes in
seconds at demo rates), so velocity windows see realistic gaps; stream lag is measured from Kinesis arrival.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import pandas as pd
import ray

from cluster.aws import client
from cluster.config import Settings, get_settings
from cluster.kinesis import put_frame
from cluster.schema import LABEL_COLUMN, SCENARIO_COLUMN
from cluster.waiting import Pacer
from simulation.generator import SimulationConfig, simulate_attack, simulate_history
from simulation.world_shift import WorldShift


@dataclass
class ProducerStats:
    partition: int
    produced: int = 0
    put_calls: int = 0
    retried_records: int = 0
    simulated_days: int = 0
    fraud_produced: int = 0
    target_tps: float = 0.0
    run_seconds: float = 0.0
    simulated_time: str = ""
    attacks: int = 0
    attack_rows: int = 0
    scenario_weights: dict[str, float] | None = None
    world_shift: str = "no shift"
    error: str = ""


class TrafficProducer:
    """One partition of simulated users streaming into Kinesis (run it as a Ray actor: see ``start_producers``)."""

    def __init__(
        self,
        partition: int,
        partitions: int,
        *,
        n_users: int,
        seed: int,
        fraud_rate: float,
        tps: float,
        start: datetime | None = None,
        scoreboard: Any | None = None,
        shift: WorldShift | None = None,
        settings: Settings | None = None,
    ):
        self.settings = settings or get_settings()  # the stream to produce into is ``settings.stream_name``
        self.scoreboard = scoreboard  # where each batch's ground truth goes (None: nowhere)
        self.partition, self.partitions = partition, partitions
        self.n_users, self.seed, self.fraud_rate = n_users, seed, fraud_rate
        self.clock = (start or datetime.now(timezone.utc)).replace(microsecond=0)
        self.now = self.clock  # the simulated time of the latest record put
        self.stats = ProducerStats(partition=partition, target_tps=tps)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._injected = pd.DataFrame()  # launched attacks' rows not produced yet, in time order
        self.shift = WorldShift()
        self.set_world_shift(shift)

    def set_rate(self, tps: float) -> None:
        if not tps > 0:
            raise ValueError(f"tps: must be > 0, got {tps}")
        self.stats.target_tps = tps

    def set_scenario_mix(self, weights: dict[str, float] | None) -> None:
        """Scenario weights for the simulated days from the next one on (``None``: all scenarios alike)."""
        SimulationConfig(n_users=self.n_users, scenario_weights=weights)  # bad weights name the field here
        self.stats.scenario_weights = dict(weights) if weights else None

    def set_world_shift(self, shift: WorldShift | None) -> str:
        """Shift the world from the next batch on (``None``: back to the world as simulated); says what it does."""
        self.shift = shift or WorldShift()
        self.stats.world_shift = self.shift.describe()
        return self.stats.world_shift

    def launch_attack(self, scenario: str, incidents: int) -> int:
        """Inject about ``incidents`` incidents of ``scenario`` into the live traffic from the simulated now on;
        returns the rows queued (the fraud and the victims' own use around it)."""
        with self._lock:
            self.stats.attacks += 1
            number, start = self.stats.attacks, self.now
        rows = simulate_attack(
            SimulationConfig(
                n_users=self.n_users,
                days=1,
                start=start,
                seed=self.seed,
                fraud_rate=self.fraud_rate,
                partition=(self.partition, self.partitions),
                id_prefix=f"p{self.partition}atk{number}-{start:%Y%m%d}",
            ),
            scenario,
            incidents,
        )
        with self._lock:
            merged = pd.concat([self._injected, rows], ignore_index=True) if len(self._injected) else rows
            self._injected = merged.sort_values("timestamp", kind="stable", ignore_index=True)
            self.stats.attack_rows += len(rows)
        return len(rows)

    def _with_attacks(self, queue: pd.DataFrame, until: datetime) -> pd.DataFrame:
        """``queue`` with the launched attacks' rows before ``until`` merged in by time."""
        with self._lock:
            if not len(self._injected):
                return queue
            due = self._injected["timestamp"] < pd.Timestamp(until)
            taken, self._injected = self._injected[due], self._injected[~due].reset_index(drop=True)
        return pd.concat([taken, queue], ignore_index=True).sort_values("timestamp", kind="stable", ignore_index=True)

    def stop(self) -> None:
        self._stop.set()

    def get_stats(self) -> dict[str, Any]:
        return asdict(self.stats)

    def _report_truth(self, batch: pd.DataFrame) -> None:
        """The batch's scenarios (``none`` for genuine, as the generator writes them) to the scoreboard, waited for:
        a decision never comes before its truth."""
        if self.scoreboard is None:
            return
        ray.get(self.scoreboard.report.remote(batch["transaction_id"].tolist(), batch[SCENARIO_COLUMN].tolist()))

    def run(self, max_records: int | None = None, batch_size: int = 250) -> dict[str, Any]:
        """Produce paced at the target rate until stopped or ``max_records`` are in Kinesis."""
        kinesis = client("kinesis", self.settings)
        stream = self.settings.stream_name
        began_run = time.perf_counter()
        pacer = Pacer(self.stats.target_tps, max_lag_s=0.0, sleep=self._stop.wait)
        try:
            while not self._stop.is_set():
                queue = simulate_history(
                    SimulationConfig(
                        n_users=self.n_users,
                        days=1,
                        start=self.clock,
                        seed=self.seed,
                        fraud_rate=self.fraud_rate,
                        scenario_weights=self.stats.scenario_weights,
                        partition=(self.partition, self.partitions),
                        id_prefix=f"p{self.partition}d{self.stats.simulated_days}-{self.clock:%Y%m%d}",
                    )
                ).transactions
                self.stats.simulated_days += 1
                self.clock += timedelta(days=1)
                while not self._stop.is_set():
                    queue = self._with_attacks(queue, until=self.clock)
                    if not len(queue):
                        break
                    if max_records is not None and self.stats.produced >= max_records:
                        self._stop.set()
                        break
                    batch, queue = queue.iloc[:batch_size], queue.iloc[batch_size:]
                    if max_records is not None:
                        batch = batch.iloc[: max_records - self.stats.produced]
                    batch = self.shift.apply(batch)
                    self._report_truth(batch)
                    put = put_frame(kinesis, stream, batch.drop(columns=[LABEL_COLUMN, SCENARIO_COLUMN]))
                    self.stats.produced += len(batch)
                    self.stats.put_calls += put.calls
                    self.stats.retried_records += put.retried_records
                    self.stats.fraud_produced += int(batch["is_fraud"].sum())
                    self.now = batch["timestamp"].iloc[-1].to_pydatetime()
                    self.stats.simulated_time = str(batch["timestamp"].iloc[-1])
                    pacer.rate = self.stats.target_tps
                    pacer.pace(len(batch))
        except Exception as exc:  # surfaced through get_stats so the driver can report it
            self.stats.error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self.stats.run_seconds = time.perf_counter() - began_run
        return self.get_stats()


def start_producers(
    settings: Settings,
    *,
    tps: float,
    n_users: int = 2000,
    actors: int | None = None,
    max_records_each: int | None = None,
    scoreboard: Any | None = None,
    shift: WorldShift | None = None,
) -> tuple[list[Any], list[Any]]:
    """Start one producer actor per partition into ``settings.stream_name``, reporting ground truth to
    ``scoreboard`` (``start_scoreboard``) if given; returns (actors, their ``run`` futures)."""
    count = actors or settings.producer_actors
    remote = ray.remote(num_cpus=0.25, max_concurrency=4, max_restarts=0)(TrafficProducer)
    handles = [
        remote.remote(
            i,
            count,
            n_users=n_users,
            seed=settings.seed,
            fraud_rate=settings.fraud_rate,
            tps=tps / count,
            scoreboard=scoreboard,
            shift=shift,
            settings=settings,
        )
        for i in range(count)
    ]
    runs = [handle.run.remote(max_records=max_records_each) for handle in handles]
    return handles, runs


def producer_totals(handles: Sequence[Any]) -> dict[str, Any]:
    stats = ray.get([handle.get_stats.remote() for handle in handles])
    totals = {key: sum(s[key] for s in stats) for key in ("produced", "put_calls", "retried_records", "fraud_produced")}
    totals["errors"] = [s["error"] for s in stats if s["error"]]
    return totals
