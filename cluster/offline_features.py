"""Offline feature builder: the ``cluster.features`` passes over Ray, for training and backtests.

1. Ray Data reads, validates and prepares blocks in parallel, keeping their order: slim numeric Arrow rows (hashed
   keys, epoch ms) plus the ids the last step needs. Arrival order, which breaks time ties, is a row's
   ``arrival_seq`` when the dataset has one (Kinesis), else its position in the dataset (``row_seq``).
2. Keyed passes: for each pass (user, merchant, merchant category) and each of ``partitions`` key-hash partitions,
   one Ray task pulls the rows of its keys, and only the columns its pass reads, from every prepared block (zero-copy
   from the object store), orders them by arrival and runs the pass with empty history; it hands its outputs
   back split by source block. Labels are revealed only ``label_delay`` after their transaction (or at their
   explicit ``known_at``), exactly as in ``build_features``. One task first lists every card's confirmed frauds
   over all blocks, which the merchant passes follow to the merchants those cards used (compromise point).
3. Per prepared block, one task places the pass outputs by row and assembles the features with the profiles.

Ray Data's ``repartition(keys=...)`` would do step 2's grouping, but each keyed shuffle is a barrier that moves
whole rows through a separate shuffle worker pool, and the passes need three of them (merchant, category, user)
where each pass reads a few numeric columns; ``fraudctl bench`` (features_offline) measures the builder.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import ray

from cluster.features import (
    FEATURE_NAMES,
    PASS_KEYS,
    PASS_OUTPUTS,
    ROW_COLUMNS,
    USER_ROW_COLUMNS,
    align_profiles,
    assemble,
    card_fraud_events,
    default_label_events,
    duration_ms,
    explicit_label_events,
    keyed_pass_values,
    partition_of,
    prepare_rows,
)
from cluster.profiles import MERCHANT_PROFILE_COLUMNS, USER_PROFILE_COLUMNS
from cluster.schema import label_values, validate_frame

ARRIVAL_SEQ = "arrival_seq"
READ_BLOCK_ROWS = 125_000
_BLOCK_BITS = 40  # row_seq = block index << 40 | row in block
# What each pass reads from a prepared block: its key's row columns and what places labels.
_PASS_COLUMNS = {
    "user": (*USER_ROW_COLUMNS, "txn_key", "is_fraud"),
    "merchant": ("merchant_key", "user_key", "ts_ms", "txn_key", "is_fraud"),
    "mcc": ("mcc_key", "ts_ms", "txn_key", "is_fraud"),
    "device": ("device_key", "user_key", "ts_ms", "txn_key", "is_fraud"),
}
_CARD_FRAUD_COLUMNS = ("user_key", "ts_ms", "txn_key", "is_fraud")  # what places every card's frauds


def read_transactions_dataset(paths: str | Path | list[str | Path]) -> Any:
    """Canonical transactions from CSV or Parquet files as a Ray Dataset, validated per block.

    Rows keep file order (the builder runs it order-preserving), so time ties keep file order. One read task per
    file, whose rows are then cut into ``READ_BLOCK_ROWS`` blocks, so validation and preparation run in parallel.
    Parquet goes through Ray Data's first datasource: the second one lists files through a pool of footer-reading
    actors started afresh for every read (32 processes by default), which on a small machine costs more than the read.
    """
    paths = [str(p) for p in (paths if isinstance(paths, list) else [paths])]
    suffixes = {Path(p).suffix.lower() for p in paths}
    if suffixes == {".csv"}:
        dataset = ray.data.read_csv(paths, override_num_blocks=len(paths))
    elif suffixes == {".parquet"}:
        context = ray.data.DataContext.get_current()
        footer_actors, context.use_datasource_v2 = context.use_datasource_v2, False
        try:
            dataset = ray.data.read_parquet(paths, override_num_blocks=len(paths))
        finally:
            context.use_datasource_v2 = footer_actors
    else:
        raise ValueError(f"paths must all be .csv or all .parquet, got {sorted(suffixes)}")
    return dataset.repartition(target_num_rows_per_block=READ_BLOCK_ROWS, strict=True).map_batches(
        _validate, batch_format="pyarrow", batch_size=None
    )


def _pandas(batch: pa.Table | pd.DataFrame) -> pd.DataFrame:
    """A batch with numpy-backed columns: Ray Data's own pandas batches hold Arrow-backed columns, several times
    slower to validate and hash."""
    return batch.to_pandas() if isinstance(batch, pa.Table) else batch


def _validate(batch: pa.Table) -> pd.DataFrame:
    return validate_frame(_pandas(batch), labelled=False)


def _prepare(batch: pa.Table | pd.DataFrame, users: pd.DataFrame | None, merchants: pd.DataFrame | None) -> pa.Table:
    """Numeric rows plus the ids the last step needs, and ``arrival_seq`` when the dataset has one."""
    batch = _pandas(batch).reset_index(drop=True)
    user_profiles = align_profiles(batch["user_id"], users, "user_id", USER_PROFILE_COLUMNS)
    merchant_profiles = align_profiles(batch["merchant_id"], merchants, "merchant_id", MERCHANT_PROFILE_COLUMNS)
    rows = prepare_rows(batch, user_profiles, merchant_profiles)
    if ARRIVAL_SEQ in batch.columns:
        rows[ARRIVAL_SEQ] = batch[ARRIVAL_SEQ].to_numpy(np.int64)
    rows["is_fraud"] = (
        np.nan_to_num(label_values(batch["is_fraud"].to_numpy(dtype=object))).astype(np.int8)
        if "is_fraud" in batch.columns
        else np.zeros(len(batch), np.int8)
    )
    for column in ("transaction_id", "user_id", "merchant_id"):
        rows[column] = pa.array(batch[column].astype("string"))
    return pa.table(rows)


def _arrival_order(block: pa.Table, index: int) -> np.ndarray:
    """Each row's ``row_seq``: its ``arrival_seq``, else its position in the dataset (block ``index``, row)."""
    if ARRIVAL_SEQ in block.column_names:
        return block.column(ARRIVAL_SEQ).to_numpy()
    return (index << _BLOCK_BITS) + np.arange(block.num_rows, dtype=np.int64)


def _card_frauds(label_delay_ms: int, events: pd.DataFrame | None, *blocks: pa.Table) -> dict[str, np.ndarray]:
    """Every card's confirmed frauds over all blocks (``card_fraud_events``): the merchant passes' suspect purchases
    follow a card to merchants of every partition."""
    rows = {c: np.concatenate([block.column(c).to_numpy() for block in blocks]) for c in _CARD_FRAUD_COLUMNS}
    order = _sorting(np.concatenate([_arrival_order(block, index) for index, block in enumerate(blocks)]))
    if order is not None:  # a repeated transaction id means its first arrival, as in the passes
        rows = {c: values[order] for c, values in rows.items()}
    if events is None:
        events = default_label_events(rows, rows["is_fraud"], timedelta(milliseconds=label_delay_ms))
    return card_fraud_events(events, rows)


def _keyed_pass(
    kind: str,
    partition: int,
    partitions: int,
    label_delay_ms: int,
    events: pd.DataFrame | None,
    card_frauds: dict[str, np.ndarray],
    *blocks: pa.Table,
) -> Any:
    """One hash partition of one pass over every prepared block; per block, (row positions, outputs x rows)."""
    key, columns = PASS_KEYS[kind], _PASS_COLUMNS[kind]
    chosen = [np.flatnonzero(partition_of(block.column(key).to_numpy(), partitions) == partition) for block in blocks]
    source = np.repeat(np.arange(len(blocks)), [len(rows) for rows in chosen])
    position = np.concatenate(chosen)
    rows = {
        c: np.concatenate([block.column(c).to_numpy()[taken] for block, taken in zip(blocks, chosen)]) for c in columns
    }
    arrival = np.concatenate(
        [_arrival_order(block, index)[taken] for index, (block, taken) in enumerate(zip(blocks, chosen))]
    )
    order = _sorting(arrival)  # the pass keeps this order within a key; dataset order needs no sort
    if order is not None:
        rows = {c: values[order] for c, values in rows.items()}
        source, position = source[order], position[order]
    if events is None:
        events = default_label_events(rows, rows["is_fraud"], timedelta(milliseconds=label_delay_ms))
    values = keyed_pass_values(kind, rows, events, label_delay_ms, card_frauds).T  # one output per row
    by_block = _sorting(source)
    if by_block is not None:
        source, position, values = source[by_block], position[by_block], values[:, by_block]
    bounds = np.searchsorted(source, np.arange(len(blocks) + 1))
    pieces = [(position[lo:hi], np.ascontiguousarray(values[:, lo:hi])) for lo, hi in zip(bounds[:-1], bounds[1:])]
    return pieces if len(pieces) > 1 else pieces[0]  # one return value per block (Ray's num_returns)


def _sorting(values: np.ndarray) -> np.ndarray | None:
    """The stable order that sorts ``values``, or None when they already are sorted."""
    if np.all(values[1:] >= values[:-1]):
        return None
    return np.argsort(values, kind="stable")


def _assemble_block(
    block: pa.Table,
    block_index: int,
    users: pd.DataFrame | None,
    merchants: pd.DataFrame | None,
    partitions: int,
    *pieces: tuple[np.ndarray, np.ndarray],
) -> pa.Table:
    """``transaction_id, row_seq`` + ``FEATURE_NAMES`` for one prepared block, from its rows' pass outputs
    (``partitions`` pieces per pass, in ``PASS_OUTPUTS`` order)."""
    passes = {}
    for slot, (kind, names) in enumerate(PASS_OUTPUTS.items()):
        values = np.zeros((len(names), block.num_rows))
        for position, part in pieces[slot * partitions : (slot + 1) * partitions]:
            values[:, position] = part
        passes[kind] = dict(zip(names, values))
    rows = {c: block.column(c).to_numpy() for c in ROW_COLUMNS}
    user_profiles = align_profiles(block.column("user_id").to_pandas(), users, "user_id", USER_PROFILE_COLUMNS)
    merchant_profiles = align_profiles(
        block.column("merchant_id").to_pandas(), merchants, "merchant_id", MERCHANT_PROFILE_COLUMNS
    )
    features = assemble(rows, passes, user_profiles, merchant_profiles)
    return pa.table(
        {
            "transaction_id": block.column("transaction_id"),
            "row_seq": _arrival_order(block, block_index),
            **{name: features[:, index] for index, name in enumerate(FEATURE_NAMES)},
        }
    )


def build_offline_features(
    dataset: Any,
    *,
    label_delay: timedelta,
    labels: pd.DataFrame | None = None,
    users: pd.DataFrame | None = None,
    merchants: pd.DataFrame | None = None,
    partitions: int = 2,
) -> Any:
    """A Dataset of ``transaction_id, row_seq`` + ``FEATURE_NAMES``, one row per input row (any order).

    Arrival order (which breaks time ties) is the dataset's ``arrival_seq`` column when it has one (the Kinesis
    datasource provides it), else the dataset order; see ``cluster.features.build_features`` for
    ``labels``/``users``/``merchants``. ``collect_features`` restores order. ``partitions`` is the number of
    key-hash partitions (tasks) per pass. The build runs before this returns; the Dataset holds its output blocks.
    """
    if partitions < 1:
        raise ValueError("partitions must be >= 1")
    delay_ms = duration_ms(label_delay)
    prepared = dataset.map_batches(
        _prepare,
        batch_format=None,
        batch_size=None,  # blocks as they are: Arrow or pandas
        fn_kwargs={"users": users, "merchants": merchants},
    )
    options = prepared.context.execution_options  # shared with the caller's dataset: restored below
    preserved, options.preserve_order = options.preserve_order, True  # block order is the dataset order
    try:
        blocks = [
            entry.ref
            for bundle in prepared.iter_internal_ref_bundles()
            for entry in bundle.blocks
            if entry.metadata.num_rows != 0
        ]  # a block without rows may lack columns too
    finally:
        options.preserve_order = preserved
    if not blocks:
        return ray.data.from_arrow(pa.table({}))
    events = ray.put(explicit_label_events(labels) if labels is not None else None)
    card_frauds = ray.remote(_card_frauds).remote(delay_ms, events, *blocks)
    keyed_pass = ray.remote(_keyed_pass).options(num_returns=len(blocks))
    outputs = [
        keyed_pass.remote(kind, partition, partitions, delay_ms, events, card_frauds, *blocks)
        for kind in PASS_OUTPUTS
        for partition in range(partitions)
    ]
    per_block = list(zip(*outputs)) if len(blocks) > 1 else [outputs]
    profiles = ray.put(users), ray.put(merchants)
    assemble_block = ray.remote(_assemble_block)
    return ray.data.from_arrow_refs(
        [
            assemble_block.remote(block, index, *profiles, partitions, *pieces)
            for index, (block, pieces) in enumerate(zip(blocks, per_block))
        ]
    )


def collect_features(features: Any) -> pd.DataFrame:
    """The builder's output as one frame in input order: ``transaction_id`` + ``FEATURE_NAMES``."""
    tables = [table for table in features.iter_batches(batch_size=None, batch_format="pyarrow") if table.num_rows]
    if not tables:
        return pd.DataFrame(
            {"transaction_id": pd.Series(dtype=object), **{name: pd.Series(dtype=np.float32) for name in FEATURE_NAMES}}
        )
    table = pa.concat_tables(tables)
    order = _sorting(table.column("row_seq").to_numpy())  # None: the blocks already are in input order
    if order is not None:
        table = table.take(order)
    out = pd.DataFrame({name: table.column(name).to_numpy().astype(np.float32, copy=False) for name in FEATURE_NAMES})
    out.insert(0, "transaction_id", table.column("transaction_id").to_pandas().astype("str"))
    return out
