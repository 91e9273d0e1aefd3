"""Online state: bounded keyed history, label feedback, S3 snapshot/restore, and the Kinesis datasource."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from cluster.config import Settings
from cluster.feature_state import TAIL_ROWS, FeatureStateCore, KeyedHistory, RecentTransactions, StreamPlacement
from cluster.features import (
    DAY_MS,
    FEATURE_NAMES,
    MERCHANT_PASS_OUTPUTS,
    Columns,
    align_profiles,
    build_features,
    label_anchor,
    prepare_rows,
)
from cluster.profiles import MERCHANT_PROFILE_COLUMNS, USER_PROFILE_COLUMNS
from cluster.waiting import wait_until
from fraudctl.bench.features import synthetic_transactions


def state_rows(transactions: pd.DataFrame) -> Columns:
    """The rows the state actors take for these transactions (no profiles)."""
    return prepare_rows(
        transactions,
        align_profiles(transactions["user_id"], None, "user_id", USER_PROFILE_COLUMNS),
        align_profiles(transactions["merchant_id"], None, "merchant_id", MERCHANT_PROFILE_COLUMNS),
    )


def test_keyed_history_takes_appends_and_evicts() -> None:
    history = KeyedHistory(("key", "ts_ms"), "key", "ts_ms")
    history.append(pd.DataFrame({"key": [5, 3, 5, 3, 9], "ts_ms": [1, 2, 3, 4, 5]}))
    history.append(pd.DataFrame({"key": [3], "ts_ms": [6]}))
    taken = history.take(np.array([3, 3, 7, 5]))
    assert {c: v.tolist() for c, v in taken.items()} == {"key": [3, 3, 3, 5, 5], "ts_ms": [2, 4, 6, 1, 3]}
    assert history.key_count == 3
    history.evict(horizon=1, cap=2)
    assert history.to_frame().to_dict("list") == {"key": [3, 3, 5, 9], "ts_ms": [4, 6, 3, 5]}
    history.evict(horizon=5, cap=10)  # keys whose rows all left the horizon expire
    assert history.key_count == 1 and len(history) == 1


def test_history_merges_its_tail_without_changing_what_it_returns() -> None:
    rng = np.random.default_rng(0)
    keys, times = rng.integers(1, 50, 3 * TAIL_ROWS), np.arange(3 * TAIL_ROWS)
    history = KeyedHistory(("key", "ts_ms"), "key", "ts_ms")
    for start in range(0, len(keys), 700):  # appends that fill and overflow the tail
        history.append({"key": keys[start : start + 700], "ts_ms": times[start : start + 700]})
    assert 0 < history.tail_rows < TAIL_ROWS and len(history) == len(keys)
    taken = history.take(np.array([7, 3]))
    expected = np.concatenate([times[keys == 3], times[keys == 7]])
    assert taken["ts_ms"].tolist() == expected.tolist() and taken["key"].tolist() == sorted(taken["key"].tolist())


def test_a_replayed_batch_gets_the_same_features_and_leaves_the_state_unchanged() -> None:
    transactions = synthetic_transactions(600, users=20, merchants=5, days=2, seed=8)
    expected = build_features(transactions, label_delay=timedelta(days=1))
    rows = state_rows(transactions)
    batch = dict(rows)
    user = FeatureStateCore("user", label_delay_ms=DAY_MS)
    head, tail = ({c: v[part] for c, v in batch.items()} for part in (slice(0, 400), slice(400, None)))
    first = user.process(head)
    state = {c: v.copy() for c, v in user.rows.to_frame().items()}
    replayed = user.process(head)
    np.testing.assert_array_equal(replayed, first)
    assert {c: v.tolist() for c, v in user.rows.to_frame().items()} == {c: v.tolist() for c, v in state.items()}
    overlapping = {c: v[350:] for c, v in batch.items()}  # a retry that overlaps the next batch
    later = user.process(overlapping)
    np.testing.assert_array_equal(later[:50], first[350:])
    assert len(user.rows) == len(transactions)
    np.testing.assert_allclose(later[50:, 0], expected["user_count_10m"].to_numpy()[400:])
    np.testing.assert_allclose(first[:, 0], expected["user_count_10m"].to_numpy()[:400])


def test_a_snapshot_s_arrays_stay_as_taken_while_the_state_goes_on() -> None:
    """The periodic snapshot is encoded and uploaded on another thread while the actor scores: what it took must
    not change under it."""
    transactions = synthetic_transactions(600, users=20, merchants=5, days=2, seed=12)
    batch = dict(state_rows(transactions))
    user = FeatureStateCore("user", label_delay_ms=DAY_MS)
    user.process({c: v[:300] for c, v in batch.items()})
    taken = user.arrays()
    kept = {name: np.array(values, copy=True) for name, values in taken.items()}
    user.process({c: v[300:] for c, v in batch.items()})
    user.compact()
    for name, values in taken.items():
        np.testing.assert_array_equal(values, kept[name], err_msg=name)
    assert len(user.rows) == 600 and len(taken["rows.user_key"]) == 300


def test_a_row_applied_before_never_joins_again_even_once_forgotten() -> None:
    transactions = synthetic_transactions(300, users=10, merchants=3, days=1, seed=9)
    rows = dict(state_rows(transactions))
    user = FeatureStateCore("user", label_delay_ms=DAY_MS)
    user.process(rows)
    user.recent = RecentTransactions(user.recent.values.shape[1], capacity=1)  # their outputs forgotten
    state = user.rows.to_frame().copy()
    user.process(rows, applied=np.ones(len(transactions), bool))
    assert user.rows.to_frame().equals(state), "a row at or before an applied position stays out"
    user.process(rows)
    assert len(user.rows) == 2 * len(transactions), "without its position the forgotten row joins again"


def test_stream_positions_order_records_and_their_lines() -> None:
    from cluster.kinesis import BEFORE_FIRST, after_record, position

    first = "49650000000000000000000000000000000000000000000000000002"  # Kinesis sequence numbers: 56 digits
    second = "49650000000000000000000000000000000000000000000000000010"
    assert BEFORE_FIRST < position(first, 0) < position(first, 99) < after_record(first) < position(second, 0)
    assert after_record(None) == BEFORE_FIRST
    placement = StreamPlacement.of(
        ["s/a", "s/b", "s/a", "s/a"], [position(first, 3), 7, position(second, 0), position(first, 1)], {"s/a": -1}
    )
    assert len(placement.records) == 3 and placement.ends() == {"s/a": position(second, 0), "s/b": 7}
    assert placement.applied({"s/a": position(first, 2), "s/b": 7}).tolist() == [False, True, False, True]
    assert placement.applied({"s/a": after_record(first), "s/b": 6}).tolist() == [True, False, False, True]
    assert placement.part(np.array([2, 1])).applied({"s/a": BEFORE_FIRST, "s/b": 9}).tolist() == [False, True]


def test_merchant_state_keeps_thirty_days_plus_the_label_delay() -> None:
    delay = timedelta(days=7)
    start = pd.Timestamp("2026-01-01T00:00:00Z")
    transactions = pd.DataFrame(
        {
            "transaction_id": [f"r{i}" for i in range(5)],
            "user_id": "u",
            "merchant_id": "m",
            "amount": 10.0,
            "is_fraud": [1, 0, 0, 0, 0],
            "timestamp": [start + pd.Timedelta(days=d) for d in (0, 0.5, 36.5, 37.25, 38)],
        }
    )
    expected = build_features(transactions, label_delay=delay)
    rows = state_rows(transactions)
    batch = {
        "key": rows["merchant_key"],
        "ts_ms": rows["ts_ms"],
        "txn_key": rows["txn_key"],
        "mcc_key": rows["mcc_key"],
        "user_key": rows["user_key"],
    }
    merchant = FeatureStateCore("merchant", label_delay_ms=7 * DAY_MS, clock_sample=1)  # the clock: the latest
    streamed = []
    for i in range(len(transactions)):
        if i == 2:  # the fraud's label, known 7 days after it, arrives before day 36.5
            known = batch["ts_ms"][:1] + 7 * DAY_MS
            merchant.add_labels(
                pd.DataFrame(
                    {
                        "key": batch["key"][:1],
                        "known_ms": known,
                        "txn_key": batch["txn_key"][:1],
                        "anchor_ms": label_anchor(batch["ts_ms"][:1], known, 7 * DAY_MS),
                    }
                )
            )
        streamed.append(merchant.process({c: v[i : i + 1] for c, v in batch.items()}))
        merchant.compact()  # evict as eagerly as possible
    streamed = np.vstack(streamed)
    names = list(MERCHANT_PASS_OUTPUTS)
    assert list(expected["merchant_delayed_count_30d"]) == [0, 0, 2, 1, 0]  # day 36.5 looks back to day -0.5
    assert list(expected["merchant_delayed_risk_30d"]) == [0, 0, 0.5, 0, 0]
    np.testing.assert_array_equal(streamed[:, names.index("delayed_count_30d")], expected["merchant_delayed_count_30d"])
    np.testing.assert_array_equal(streamed[:, names.index("delayed_fraud_30d")], [0, 0, 1, 0, 0])
    assert len(merchant.rows) == 3 and len(merchant.labels) == 0  # days 0 and 0.5 have left, the label with day 0


def test_one_transaction_dated_years_ahead_neither_moves_the_clock_nor_evicts_the_windows() -> None:
    transactions = synthetic_transactions(600, users=20, merchants=5, days=2, seed=4)
    future = transactions.tail(1).assign(transaction_id="from-9999", timestamp=pd.Timestamp("9999-01-01", tz="UTC"))
    every = pd.concat([transactions, future], ignore_index=True)
    rows = dict(
        prepare_rows(
            every,
            align_profiles(every["user_id"], None, "user_id", USER_PROFILE_COLUMNS),
            align_profiles(every["merchant_id"], None, "merchant_id", MERCHANT_PROFILE_COLUMNS),
        )
    )
    user = FeatureStateCore("user", label_delay_ms=DAY_MS)
    user.process(rows)
    user.compact()
    assert len(user.rows) == len(every), "nothing evicted: the clock stayed with the traffic"
    real_latest = int(rows["ts_ms"][:-1].max())
    assert user.event_time_ms <= real_latest
    week_on = {c: v[:-1] for c, v in rows.items()}  # the same cards a week on, as new transactions
    week_on["ts_ms"] = week_on["ts_ms"] + 7 * DAY_MS
    week_on["txn_key"] = week_on["txn_key"] + 1
    user.process(week_on)
    assert user.event_time_ms > real_latest, "a week of real traffic moves it on"


def test_merchant_state_follows_card_frauds_to_the_merchants_the_card_used_before() -> None:
    delay = 2 * DAY_MS
    start = pd.Timestamp("2026-01-01T00:00:00Z")
    days = (0, 0.01, 1, 2, 3.1, 3.2, 11)
    transactions = pd.DataFrame(
        {
            "transaction_id": [f"r{i}" for i in range(len(days))],
            "user_id": ["u1", "u2", "u1", "u1", "u3", "u4", "u5"],
            "merchant_id": ["m1", "m1", "m2", "m3", "m1", "m2", "m1"],
            "amount": 10.0,
            "is_fraud": [0, 0, 1, 0, 0, 0, 0],
            "timestamp": [start + pd.Timedelta(days=d) for d in days],
        }
    )
    expected = build_features(transactions, label_delay=timedelta(milliseconds=delay))
    rows = state_rows(transactions)
    batch = {
        "key": rows["merchant_key"],
        "ts_ms": rows["ts_ms"],
        "txn_key": rows["txn_key"],
        "mcc_key": rows["mcc_key"],
        "user_key": rows["user_key"],
    }
    merchant = FeatureStateCore("merchant", label_delay_ms=delay)
    fraud = pd.DataFrame(
        {"user_key": batch["user_key"][2:3], "ts_ms": batch["ts_ms"][2:3], "known_ms": batch["ts_ms"][2:3] + delay}
    )
    streamed = []
    for i in range(len(transactions)):
        if i == 4:  # the label of r2 (u1's fraud at m2 on day 1) arrives on day 3
            assert merchant.add_card_frauds(fraud) == 2  # u1's purchases at m1 (day 0) and m2 (the fraud itself)
            assert merchant.add_card_frauds(fraud) == 0  # a repeated label changes nothing
        streamed.append(merchant.process({c: v[i : i + 1] for c, v in batch.items()}))
    streamed = np.vstack(streamed)
    names = list(MERCHANT_PASS_OUTPUTS)
    assert list(expected["merchant_compromise_count_7d"]) == [0, 0, 0, 0, 1, 1, 0]
    np.testing.assert_array_equal(streamed[:, names.index("exposed_7d")], expected["merchant_compromise_count_7d"])
    for window in ("7d", "30d"):
        share = np.divide(
            streamed[:, names.index(f"delayed_exposed_{window}")],
            streamed[:, names.index(f"delayed_count_{window}")],
            out=np.zeros(len(streamed)),
            where=streamed[:, names.index(f"delayed_count_{window}")] > 0,
        )
        np.testing.assert_allclose(share, expected[f"merchant_compromise_share_{window}"], rtol=1e-6)
    assert expected["merchant_compromise_share_30d"].iloc[-1] == pytest.approx(1 / 3)  # m1 up to day 9: 1 of 3
    arrays = {name: values for name, values in merchant.arrays().items() if not name.startswith("exposures.")}
    older = FeatureStateCore("merchant", label_delay_ms=delay)
    older.load_arrays(arrays)  # a snapshot from before the compromise point loads with none known
    assert len(older.exposures) == 0 and len(older.rows) == len(transactions)


def test_restarted_actors_continue_from_their_snapshot(ray_session: Settings) -> None:
    from cluster.feature_state import OnlineFeatures

    transactions = synthetic_transactions(4_000, users=150, merchants=20, days=10, seed=3)
    transactions["user_id"] = "restart-" + transactions["user_id"]
    expected = build_features(transactions, label_delay=timedelta(days=1))
    first = OnlineFeatures(ray_session, name="restart", restore=False)
    head = first.compute(transactions.iloc[:2_000])
    assert first.snapshot() == ["feature-state/restart/0-of-1.npz.zst"]  # every kind and the positions, one object
    first.shutdown()
    another = OnlineFeatures(ray_session, name="restart-another")  # its own snapshots: none yet
    copy = OnlineFeatures(ray_session, name="restart-copy", restore_from="restart")
    try:
        assert another.stats()["user"]["keys"] == 0
        assert copy.stats()["user"]["keys"] == transactions["user_id"].iloc[:2_000].nunique()
    finally:
        another.shutdown()
        copy.shutdown()
    second = OnlineFeatures(ray_session, name="restart", restore=True)
    try:
        tail = second.compute(transactions.iloc[2_000:])
        assert second.stats()["user"]["keys"] == transactions["user_id"].nunique()
    finally:
        second.shutdown()
    streamed = pd.concat([head, tail], ignore_index=True)
    user_columns = [n for n in FEATURE_NAMES if n.startswith(("user_", "first_time", "new_device", "distance"))]
    np.testing.assert_allclose(streamed[user_columns], expected[user_columns], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(streamed["merchant_count_7d"], expected["merchant_count_7d"])


def test_a_snapshot_from_before_a_kind_existed_loads_with_that_kind_empty(ray_session: Settings) -> None:
    """Device linking came after the first snapshots: theirs have no device arrays, and must still restore."""
    from cluster.aws import client
    from cluster.feature_state import OnlineFeatures, decode_snapshot, encode_snapshot

    transactions = synthetic_transactions(600, users=30, merchants=6, days=3, seed=8)
    transactions["user_id"] = "older-" + transactions["user_id"]
    first = OnlineFeatures(ray_session, name="older", restore=False)
    try:
        first.compute(transactions.iloc[:300])
        (key,) = first.snapshot()
        assert first.stats()["device"]["rows"] > 0
    finally:
        first.shutdown()
    s3 = client("s3", ray_session)
    arrays, meta = decode_snapshot(s3.get_object(Bucket=ray_session.model_bucket, Key=key)["Body"].read())
    older = {name: values for name, values in arrays.items() if not name.startswith("device.")}
    s3.put_object(Bucket=ray_session.model_bucket, Key=key, Body=encode_snapshot(older, meta))
    restored = OnlineFeatures(ray_session, name="older")
    try:
        stats = restored.stats()
        assert stats["user"]["keys"] == transactions["user_id"].iloc[:300].nunique()
        assert stats["device"]["rows"] == 0
        later = restored.compute(transactions.iloc[300:])
        assert (later["device_cards_30d"] >= 0).all() and restored.stats()["device"]["rows"] > 0
    finally:
        restored.shutdown()


def test_state_actors_snapshot_on_their_own_while_they_score(ray_session: Settings) -> None:
    import time

    from cluster.feature_state import OnlineFeatures

    transactions = synthetic_transactions(600, users=40, merchants=8, days=5, seed=4)
    transactions["user_id"] = "periodic-" + transactions["user_id"]
    settings = ray_session.model_copy(update={"feature_snapshot_interval_s": 0.5})
    scoring = OnlineFeatures(settings, name="periodic", restore=False)
    try:
        scoring.compute(transactions.iloc[:300])
        time.sleep(0.6)
        scoring.compute(transactions.iloc[300:])  # due: the state after this batch goes to S3, unasked
        # ... from the actor's snapshot thread, while the actor takes calls
        wait_until(
            lambda: scoring.summary()["last_snapshot_at"] is not None,
            timeout_s=30,
            what="the periodic snapshot uploaded",
        )
    finally:
        scoring.shutdown()
    restarted = OnlineFeatures(ray_session, name="periodic", restore=True)
    try:
        assert restarted.stats()["user"]["keys"] == transactions["user_id"].nunique()
    finally:
        restarted.shutdown()


def test_label_feedback_raises_merchant_risk_for_later_transactions(ray_session: Settings) -> None:
    from cluster.feature_state import OnlineFeatures

    start = pd.Timestamp("2026-02-01T00:00:00Z")

    def batch(ids: list[str], minutes: list[int]) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "transaction_id": ids,
                "user_id": "fb-user",
                "merchant_id": "fb-merchant",
                "amount": 20.0,
                "mcc": "5999",
                "timestamp": [start + pd.Timedelta(minutes=m) for m in minutes],
            }
        )

    online = OnlineFeatures(ray_session, name="feedback", restore=False)
    try:
        before = online.compute(batch(["fb-1", "fb-2"], [0, 10]))
        applied = online.record_labels(
            pd.DataFrame(
                {
                    "transaction_id": ["fb-1", "fb-2"],
                    "is_fraud": [True, False],
                    "known_at": [start + pd.Timedelta(minutes=30)] * 2,
                }
            )
        )
        after = online.compute(batch(["fb-3", "fb-4"], [20, 40]))
    finally:
        online.shutdown()
    assert applied == 1
    assert list(before["merchant_fraud_count_7d"]) == [0, 0]
    assert list(after["merchant_fraud_count_7d"]) == [0, 1]  # known at minute 30: only the later one sees it
    assert after["merchant_risk_1d"].iloc[1] > after["merchant_risk_1d"].iloc[0]
    assert after["mcc_risk_30d"].iloc[1] > after["mcc_risk_30d"].iloc[0]


def test_kinesis_datasource_reads_every_shard_back(ray_session: Settings) -> None:
    from cluster.aws import client
    from cluster.kinesis_source import read_kinesis
    from cluster.offline_features import build_offline_features, collect_features

    stream = "features-datasource-test"
    kinesis = client("kinesis", ray_session)
    kinesis.create_stream(StreamName=stream, ShardCount=2)
    kinesis.get_waiter("stream_exists").wait(StreamName=stream, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    transactions = synthetic_transactions(300, users=30, merchants=5, days=2, seed=5)
    records = [
        {
            "Data": json.dumps({**row, "timestamp": row["timestamp"].isoformat()}).encode(),
            "PartitionKey": row["user_id"],
        }
        for row in transactions.to_dict(orient="records")
    ]
    records.append({"Data": b'{"transaction_id": "bad"}', "PartitionKey": "x"})
    for start in range(0, len(records), 100):
        kinesis.put_records(StreamName=stream, Records=records[start : start + 100])

    dataset = read_kinesis(stream, ray_session)
    frame = dataset.to_pandas()
    assert sorted(frame["transaction_id"]) == sorted(transactions["transaction_id"])
    assert frame["shard_id"].nunique() == 2
    assert frame.groupby("shard_id")["sequence_number"].apply(lambda s: list(map(int, s)) == sorted(map(int, s))).all()

    built = collect_features(build_offline_features(dataset, label_delay=timedelta(days=1), partitions=2))
    ordered = frame.sort_values("arrival_seq").drop(columns=["shard_id", "sequence_number", "arrival_ms"])
    expected = build_features(ordered, label_delay=timedelta(days=1))
    assert list(built["transaction_id"]) == list(expected["transaction_id"])
    np.testing.assert_allclose(built[list(FEATURE_NAMES)], expected[list(FEATURE_NAMES)], rtol=1e-5, atol=1e-4)


def test_a_snapshot_of_another_stream_set_is_refused(ray_session: Settings) -> None:
    """Two deployments sharing a bucket and a state name: a state never loads the other's windows and positions."""
    from cluster.feature_state import OnlineFeatures

    transactions = synthetic_transactions(300, users=30, merchants=6, days=3, seed=6)
    transactions["user_id"] = "guarded-" + transactions["user_id"]
    users = transactions["user_id"].nunique()
    ours = ray_session.model_copy(update={"stream_name": "guarded-in", "ingest_stream_name": "guarded-ingest"})
    theirs = ours.model_copy(update={"stream_name": "guarded-other-in"})
    first = OnlineFeatures(ours, name="guarded", restore=False)
    try:
        first.compute(transactions)
        first.snapshot()
    finally:
        first.shutdown()
    foreign = OnlineFeatures(theirs, name="guarded")  # same bucket and name, another stream: its own is refused
    try:
        assert foreign.stats()["user"]["keys"] == 0
        assert foreign.restore() == [False] and foreign.summary()["recoveries"] == 0
    finally:
        foreign.shutdown()
    copy = OnlineFeatures(
        ours.model_copy(update={"ingest_stream_name": "guarded-other-ingest"}),
        name="guarded-copy",
        restore_from="guarded",
    )  # another ingest stream is another stream set too
    try:
        assert copy.stats()["user"]["keys"] == 0
    finally:
        copy.shutdown()
    same = OnlineFeatures(ours, name="guarded")
    try:
        assert same.stats()["user"]["keys"] == users, "the snapshot of its own stream set loads"
    finally:
        same.shutdown()


def test_the_state_name_is_a_setting_that_reaches_workers_and_names_only_safe_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FRAUD_FEATURE_STATE_NAME", "features-eu")
    settings = Settings()
    assert settings.feature_state_name == "features-eu"
    assert settings.as_env()["FRAUD_FEATURE_STATE_NAME"] == "features-eu"  # what Ray workers and children get
    with pytest.raises(ValidationError, match="feature_state_name"):
        Settings(feature_state_name="../features")  # an actor name and an S3 folder: no path in it
