"""The autoencoder: learns what genuine transactions look like; its reconstruction error flags the unusual.

input -> 32 -> 16 -> 8 -> 16 -> 32 -> input, ReLU, dropout 0.2, trained on genuine training rows only, inputs
standardised on the training period. The anomaly score maps the reconstruction error to [0, 1] through the
quantiles of the genuine training errors (0.5 = a median genuine row), so it reads the same on any data.
Learning rate, weight decay and epochs are tuned with Ray Tune (ASHA on validation average precision).

It reads only the features ``anomaly_inputs`` keeps: none computed from fraud labels (those are what known fraud
looks like, XGBoost's job, and they move with every label that arrives) and none whose genuine distribution shifts
across the training window (a trailing count that grows while history accumulates makes every later row look
unusual, and a review level set on validation rows would then flag many times its share of later traffic).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ray import tune
from sklearn.metrics import average_precision_score
from sklearn.preprocessing import StandardScaler
from torch import nn

from cluster.features import LABEL_FEATURES
from training.reference import bin_counts, bin_edges, psi
from training.tuning import run_search

HIDDEN = (32, 16, 8)
DROPOUT = 0.2
CLIP = 10.0  # standardised inputs are clipped so one extreme value cannot blow up training
QUANTILE_LEVELS = np.linspace(0.0, 1.0, 201)
TOP_OF_TRAINING = 0.999  # score of the largest genuine training error; errors beyond it approach 1
METRIC = "valid_ap"
BATCH_SIZE = 256
STABLE_PSI = 0.1  # below this PSI a distribution counts as unchanged (the usual reading of the index)


class Autoencoder(nn.Module):
    def __init__(self, n_inputs: int, dropout: float = DROPOUT):
        super().__init__()
        widths = (n_inputs, *HIDDEN, *reversed(HIDDEN[:-1]))
        layers: list[nn.Module] = []
        for index, (width_in, width_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers += [nn.Linear(width_in, width_out), nn.ReLU()]
            if index != len(HIDDEN) - 1:  # no dropout on the bottleneck code
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(HIDDEN[0], n_inputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def fit_scaler(x_train: np.ndarray) -> StandardScaler:
    return StandardScaler().fit(x_train)


def standardise(scaler: StandardScaler, x: np.ndarray) -> np.ndarray:
    return np.clip(scaler.transform(x), -CLIP, CLIP).astype(np.float32)


def reconstruction_error(model: Autoencoder, z: np.ndarray, batch: int = 65_536) -> np.ndarray:
    """Mean squared error per row of standardised inputs."""
    model.eval()
    errors = []
    with torch.no_grad():
        for start in range(0, len(z), batch):
            chunk = torch.from_numpy(z[start : start + batch])
            errors.append(((model(chunk) - chunk) ** 2).mean(dim=1).numpy())
    return np.concatenate(errors) if errors else np.zeros(0, dtype=np.float32)


def train_epochs(
    z_genuine: np.ndarray, config: dict[str, Any], *, seed: int, epochs: int, on_epoch: Any = None
) -> Autoencoder:
    """Adam on mini-batches of genuine rows; ``on_epoch(model, epoch)`` after each epoch (Tune reporting)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a network this small only loses time to intra-op threading
    try:
        return _train(z_genuine, config, generator, epochs, on_epoch)
    finally:
        torch.set_num_threads(threads)


def _train(
    z_genuine: np.ndarray, config: dict[str, Any], generator: torch.Generator, epochs: int, on_epoch: Any
) -> Autoencoder:
    model = Autoencoder(z_genuine.shape[1])
    optimiser = torch.optim.Adam(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    data = torch.from_numpy(np.array(z_genuine, dtype=np.float32))  # a writable copy (Ray's are read-only)
    for epoch in range(1, epochs + 1):
        model.train()
        for index in torch.randperm(len(data), generator=generator).split(BATCH_SIZE):
            batch = data[index]
            optimiser.zero_grad()
            loss = ((model(batch) - batch) ** 2).mean()
            loss.backward()
            optimiser.step()
        if on_epoch is not None:
            on_epoch(model, epoch)
    return model


def _trial(config: dict[str, Any], *, data: dict[str, Any]) -> None:
    z_valid = np.array(data["z_valid"])  # a writable copy: Ray hands out read-only arrays

    def report(model: Autoencoder, epoch: int) -> None:
        errors = reconstruction_error(model, z_valid)
        tune.report({METRIC: float(average_precision_score(data["y_valid"], errors))})

    train_epochs(data["z_genuine"], config, seed=data["seed"], epochs=config["epochs"], on_epoch=report)


@dataclass(frozen=True)
class AESearch:
    trials: int = 4
    max_epochs: int = 24
    grace_epochs: int = 4
    max_rows: int = 60_000  # genuine rows per trial epoch; enough to learn "normal", keeps trials short
    cpus_per_trial: float = 0.5
    seed: int = 42


@dataclass
class AETuning:
    config: dict[str, Any]
    epochs: int
    valid_ap: float
    trials: list[dict[str, Any]] = field(default_factory=list)


def genuine_sample(z: np.ndarray, y: np.ndarray, max_rows: int, seed: int) -> np.ndarray:
    genuine = z[y == 0]
    if len(genuine) > max_rows:
        genuine = genuine[np.sort(np.random.default_rng(seed).choice(len(genuine), max_rows, replace=False))]
    return genuine


def tune_autoencoder(
    z_train: np.ndarray,
    y_train: np.ndarray,
    z_valid: np.ndarray,
    y_valid: np.ndarray,
    *,
    search: AESearch,
    storage: Path,
) -> AETuning:
    """Search lr / weight decay / epochs with Ray Tune + ASHA; inputs already standardised; Ray initialised."""
    data = {
        "z_genuine": genuine_sample(z_train, y_train, search.max_rows, search.seed),
        "z_valid": z_valid,
        "y_valid": y_valid,
        "seed": search.seed,
    }
    space = {
        "lr": tune.loguniform(3e-4, 1e-2),
        "weight_decay": tune.loguniform(1e-7, 1e-3),
        "epochs": tune.choice(sorted({max(search.max_epochs // 2, 1), search.max_epochs})),
    }
    trials = run_search(
        _trial,
        data,
        space=space,
        metric=METRIC,
        max_t=search.max_epochs,
        grace=search.grace_epochs,
        trials=search.trials,
        cpus_per_trial=search.cpus_per_trial,
        seed=search.seed,
        storage=storage,
        name="autoencoder",
    )
    best = max(trials, key=lambda t: t["score"])
    return AETuning(config=best["config"], epochs=best["iteration"], valid_ap=best["score"], trials=trials)


def anomaly_inputs(feature_names: Sequence[str], early: np.ndarray, late: np.ndarray) -> tuple[int, ...]:
    """The columns the autoencoder reads: not label-driven, and with PSI below ``STABLE_PSI`` between genuine rows of
    an earlier part of the window (``early``: the first fold's training rows) and its latest (``late``: the last
    fold's validation rows), binned on both so growth beyond the early range shows. Should every such column shift,
    all the label-free ones (the training details list what was read)."""
    label_driven = set(LABEL_FEATURES)
    behaviour = [index for index, name in enumerate(feature_names) if name not in label_driven]

    def shift(column: int) -> float:
        edges = bin_edges(np.concatenate([early[:, column], late[:, column]]))
        return psi(bin_counts(early[:, column], edges), bin_counts(late[:, column], edges)) or 0.0

    stable = tuple(column for column in behaviour if shift(column) < STABLE_PSI)
    return stable or tuple(behaviour)


class AnomalyScorer:
    """Scaler + autoencoder + genuine-error quantiles over the ``inputs`` columns: a full feature row -> anomaly
    score in [0, 1]."""

    def __init__(self, scaler: StandardScaler, model: Autoencoder, error_quantiles: np.ndarray, inputs: Sequence[int]):
        self.inputs = np.asarray(inputs, dtype=np.intp)
        self.scaler = scaler
        self.model = model.eval()
        self.error_quantiles = np.asarray(error_quantiles, dtype=np.float64)
        self._mean = scaler.mean_.astype(np.float32)
        self._scale = scaler.scale_.astype(np.float32)

    @classmethod
    def fit(
        cls,
        x_train: np.ndarray,
        y_train: np.ndarray,
        config: dict[str, Any],
        epochs: int,
        *,
        inputs: Sequence[int] | None = None,
        seed: int = 42,
        max_rows: int = 200_000,
    ) -> "AnomalyScorer":
        """``inputs``: the columns of ``x_train`` to read (``anomaly_inputs``); all of them by default."""
        inputs = tuple(range(x_train.shape[1])) if inputs is None else tuple(inputs)
        x_inputs = x_train[:, list(inputs)]
        scaler = fit_scaler(x_inputs)
        genuine = genuine_sample(standardise(scaler, x_inputs), y_train, max_rows, seed)
        model = train_epochs(genuine, config, seed=seed, epochs=epochs)
        return cls(scaler, model, np.quantile(reconstruction_error(model, genuine), QUANTILE_LEVELS), inputs)

    def standardise(self, x: np.ndarray) -> np.ndarray:
        """A full feature matrix -> the standardised, clipped ``inputs`` columns."""
        x = np.asarray(x, dtype=np.float32)[:, self.inputs]
        return np.clip((x - self._mean) / self._scale, -CLIP, CLIP)

    def errors(self, x: np.ndarray) -> np.ndarray:
        return reconstruction_error(self.model, self.standardise(x))

    def score(self, x: np.ndarray) -> np.ndarray:
        """Quantile of the error among genuine training rows; beyond the largest, a strictly rising tail to 1."""
        errors = self.errors(x).astype(np.float64)
        quantiles = self.error_quantiles
        scores = np.interp(errors, quantiles, QUANTILE_LEVELS * TOP_OF_TRAINING)
        beyond = errors > quantiles[-1]
        scores[beyond] = TOP_OF_TRAINING + (1 - TOP_OF_TRAINING) * (1 - quantiles[-1] / errors[beyond])
        return scores

    def state(self) -> tuple[bytes, dict[str, Any]]:
        """Weights (torch bytes) and the JSON-ready rest."""
        buffer = io.BytesIO()
        torch.save(self.model.state_dict(), buffer)
        return buffer.getvalue(), {
            "n_inputs": int(self._mean.shape[0]),
            "scaler_mean": self.scaler.mean_.tolist(),
            "scaler_scale": self.scaler.scale_.tolist(),
            "error_quantiles": self.error_quantiles.tolist(),
            "inputs": self.inputs.tolist(),
        }

    @classmethod
    def from_state(cls, weights: bytes, meta: dict[str, Any]) -> "AnomalyScorer":
        scaler = StandardScaler()
        scaler.mean_ = np.asarray(meta["scaler_mean"], dtype=np.float64)
        scaler.scale_ = np.asarray(meta["scaler_scale"], dtype=np.float64)
        scaler.var_ = scaler.scale_**2
        scaler.n_features_in_ = len(scaler.mean_)
        model = Autoencoder(int(meta["n_inputs"]))
        model.load_state_dict(torch.load(io.BytesIO(weights), weights_only=True))
        inputs = meta.get("inputs", range(int(meta["n_inputs"])))  # bundles before input selection read every column
        return cls(scaler, model, np.asarray(meta["error_quantiles"]), inputs)
