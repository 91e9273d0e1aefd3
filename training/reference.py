"""Reference distributions of a model's training period, stored in its bundle, that monitoring compares live traffic
against (``serve/monitoring.py``): per feature fixed bins with their counts and the missing rate, the same for the
calibrated score, and the missing rate of each optional transaction field.

The score's reference comes from rows the models did not train on (the validation period): scores of the training
rows themselves are in-sample, far more confident than any live score, so every live window would look drifted.

Bins are fixed at training so a window of live rows is summarised by counts alone (one ``np.searchsorted`` per
column): a feature with at most ``BINS`` distinct values gets a bin per value, any other gets ``BINS`` quantile bins.
Every binning has one bin below the first edge and a last bin for missing (NaN) values, so counts always have
``len(edges) + 2`` entries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

BINS = 10
PSI_EPSILON = 1e-4
# Fields of a transaction that may be absent; the features substitute a neutral value and raise an indicator then.
OPTIONAL_INPUTS = ("device_id", "channel", "mcc", "country", "lat", "lon")


def bin_edges(values: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Edges for one column's finite values: each distinct value when there are few, else unique quantiles."""
    finite = values[np.isfinite(values)].astype(np.float64)
    if not len(finite):
        return np.zeros(0)
    distinct = np.unique(finite)
    if len(distinct) <= bins:
        return distinct
    return np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1]))


def bin_positions(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Each value's bin: 0 below the first edge, i from ``edges[i-1]`` on, ``len(edges) + 1`` for missing."""
    positions = np.searchsorted(edges, values, side="right")
    positions[np.isnan(values)] = len(edges) + 1
    return positions


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts per bin, ``len(edges) + 2`` of them (below the first edge, between edges, from the last on, missing)."""
    return np.bincount(bin_positions(np.asarray(values, dtype=np.float64), edges), minlength=len(edges) + 2)


def bin_matrix(x: np.ndarray, edges: Sequence[np.ndarray], width: int) -> np.ndarray:
    """(columns x ``width``) counts of a (rows x columns) matrix, column j binned by ``edges[j]`` as ``bin_counts``
    does (zero-padded to ``width``), in one ``np.bincount``."""
    columns = np.ascontiguousarray(np.asarray(x, dtype=np.float64).T)
    flat = np.concatenate(
        [
            bin_positions(column, column_edges) + j * width
            for j, (column, column_edges) in enumerate(zip(columns, edges))
        ]
    )
    return np.bincount(flat, minlength=len(edges) * width).reshape(len(edges), width)


def psi(reference: np.ndarray, window: np.ndarray, epsilon: float = PSI_EPSILON) -> float | None:
    """Population stability index of ``window`` counts against ``reference`` counts (same bins); None for no rows."""
    reference, window = np.asarray(reference, np.float64), np.asarray(window, np.float64)
    if reference.sum() <= 0 or window.sum() <= 0:
        return None
    p = np.maximum(reference / reference.sum(), epsilon)
    q = np.maximum(window / window.sum(), epsilon)
    return float(np.sum((q - p) * np.log(q / p)))


def input_missing_rates(columns: Mapping[str, Sequence[Any]]) -> dict[str, float]:
    """Share of rows without each optional field (None or NaN), of the fields ``columns`` has."""
    return {
        name: float(pd.isna(np.asarray(columns[name], dtype=object)).mean()) if len(columns[name]) else 0.0
        for name in OPTIONAL_INPUTS
        if name in columns
    }


def build_reference(
    x: np.ndarray, feature_names: Sequence[str], scores: np.ndarray, *, inputs: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """The JSON-ready reference of a training matrix (rows x ``feature_names``) and calibrated ``scores`` of rows
    the models never trained on."""

    def summary(values: np.ndarray) -> dict[str, Any]:
        edges = bin_edges(values)
        counts = bin_counts(values, edges)
        return {
            "edges": edges.tolist(),
            "counts": counts.tolist(),
            "missing_rate": float(counts[-1] / max(len(values), 1)),
        }

    return {
        "rows": int(len(x)),
        "bins": BINS,
        "features": {name: summary(x[:, j]) for j, name in enumerate(feature_names)},
        "score": summary(np.asarray(scores, dtype=np.float64)),
        "inputs": {name: {"missing_rate": float(rate)} for name, rate in (inputs or {}).items()},
    }
