"""Model registry: versioned bundles in the S3 model bucket (embedded moto by default) or a local folder.

A bundle is everything scoring needs: the XGBoost model (UBJ), the autoencoder weights, its scaler and error
quantiles, the feature list and the hash of the feature code, the ensemble (weights, calibration, cut points),
metrics, a data summary and the training period's reference distributions (for drift monitoring). ``latest`` and ``champion`` pointers name versions. Loading refuses a bundle built
with different feature code: its model would silently receive features it was never trained on.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import xgboost as xgb
from botocore.exceptions import ClientError

from cluster.aws import client
from cluster.config import Settings, get_settings
from cluster.features import FEATURE_VERSION
from training.autoencoder import AnomalyScorer
from training.ensemble import Ensemble

XGB_FILE = "xgboost.ubj"
AE_FILE = "autoencoder.pt"
META_FILE = "bundle.json"
POINTERS = ("latest", "champion")
ROLLOUT_FILE = "rollout.json"  # beside the pointers: which challenger serves how much traffic (serve/rollout.py)
PREFIX = "models"
CHAMPION_METRIC = "average_precision"


class FeatureVersionMismatch(ValueError):
    """The bundle was trained on another feature spec than the one running now (``cluster.features.FEATURE_VERSION``)."""


class StaleWrite(RuntimeError):
    """The object changed since it was read, so the write was refused: the caller re-reads and decides again
    rather than overwrite a change it never saw."""


class ModelNotFound(LookupError):
    pass


@dataclass
class ModelBundle:
    booster: xgb.Booster
    anomaly: AnomalyScorer
    ensemble: Ensemble
    feature_names: tuple[str, ...]
    feature_version: str
    metrics: dict[str, Any] = field(default_factory=dict)
    data_summary: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    # the training period's distributions (``training.reference.build_reference``) that monitoring compares against
    reference: dict[str, Any] | None = None
    version: str | None = None
    created_at: str | None = None

    def to_files(self) -> dict[str, bytes]:
        weights, anomaly_meta = self.anomaly.state()
        meta = {
            "version": self.version,
            "created_at": self.created_at,
            "feature_names": list(self.feature_names),
            "feature_version": self.feature_version,
            "ensemble": self.ensemble.to_dict(),
            "autoencoder": anomaly_meta,
            "metrics": self.metrics,
            "data_summary": self.data_summary,
            "training": self.training,
            "reference": self.reference,
        }
        return {
            XGB_FILE: bytes(self.booster.save_raw("ubj")),
            AE_FILE: weights,
            META_FILE: json.dumps(meta, indent=2, default=str).encode(),
        }

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> "ModelBundle":
        meta = json.loads(files[META_FILE])
        booster = xgb.Booster()
        booster.load_model(bytearray(files[XGB_FILE]))
        return cls(
            booster=booster,
            anomaly=AnomalyScorer.from_state(files[AE_FILE], meta["autoencoder"]),
            ensemble=Ensemble.from_dict(meta["ensemble"]),
            feature_names=tuple(meta["feature_names"]),
            # a bundle from before specs: refused as a mismatch
            feature_version=meta.get("feature_version", ""),
            metrics=meta["metrics"],
            data_summary=meta["data_summary"],
            training=meta.get("training", {}),
            reference=meta.get("reference"),  # None in a bundle from before monitoring
            version=meta["version"],
            created_at=meta["created_at"],
        )


class _Store(Protocol):
    location: str

    def put(self, key: str, body: bytes) -> None: ...
    def get(self, key: str) -> bytes | None: ...
    def delete(self, key: str) -> None: ...
    def keys(self, prefix: str) -> list[str]: ...
    def get_tagged(self, key: str) -> tuple[bytes | None, str | None]: ...
    def put_if(self, key: str, body: bytes, expected: str | None) -> None: ...


class _S3Store:
    def __init__(self, settings: Settings):
        self.bucket = settings.model_bucket
        self.location = f"s3://{self.bucket}"
        self._s3 = client("s3", settings)

    def put(self, key: str, body: bytes) -> None:
        self._s3.put_object(Bucket=self.bucket, Key=key, Body=body)

    def get(self, key: str) -> bytes | None:
        try:
            return self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise

    def get_tagged(self, key: str) -> tuple[bytes | None, str | None]:
        """The object and its ETag, or (None, None)."""
        try:
            answer = self._s3.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None, None
            raise
        return answer["Body"].read(), answer["ETag"]

    def put_if(self, key: str, body: bytes, expected: str | None) -> None:
        """S3's conditional write: only over the ETag ``expected``, or only where nothing is (None)."""
        condition = {"IfMatch": expected} if expected else {"IfNoneMatch": "*"}
        try:
            self._s3.put_object(Bucket=self.bucket, Key=key, Body=body, **condition)
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"):
                raise StaleWrite(f"s3://{self.bucket}/{key} changed since it was read") from exc
            raise

    def delete(self, key: str) -> None:
        self._s3.delete_object(Bucket=self.bucket, Key=key)

    def keys(self, prefix: str) -> list[str]:
        pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


class _LocalStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.location = str(self.root.resolve())

    def put(self, key: str, body: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(path.name + ".tmp")
        staging.write_bytes(body)
        staging.replace(path)

    def get(self, key: str) -> bytes | None:
        path = self.root / key
        return path.read_bytes() if path.is_file() else None

    def get_tagged(self, key: str) -> tuple[bytes | None, str | None]:
        body = self.get(key)
        return body, hashlib.sha256(body).hexdigest() if body is not None else None

    def put_if(self, key: str, body: bytes, expected: str | None) -> None:
        """The same condition as S3's, under a lock file, so that two processes on one folder cannot both win."""
        lock = self.root / f"{key}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with lock.open("w") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            if self.get_tagged(key)[1] != expected:
                raise StaleWrite(f"{self.root / key} changed since it was read")
            self.put(key, body)

    def delete(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)

    def keys(self, prefix: str) -> list[str]:
        base = self.root / prefix
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file()) if base.exists() else []


class ModelRegistry:
    """Versions under ``models/versions/<version>/``; pointers under ``models/pointers/<name>``."""

    def __init__(self, settings: Settings | None = None, *, root: Path | None = None):
        self._store: _Store = _LocalStore(root) if root is not None else _S3Store(settings or get_settings())

    @property
    def location(self) -> str:
        return self._store.location

    def register(
        self, bundle: ModelBundle, *, promote: bool | None = None, attachments: dict[str, bytes] | None = None
    ) -> str:
        """Store a new version and move ``latest``; ``champion`` moves when asked, or by default when there is
        none yet or the new test average precision is at least the champion's."""
        now = datetime.now(timezone.utc)
        bundle.version = f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
        bundle.created_at = now.isoformat()
        for name, body in {**bundle.to_files(), **(attachments or {})}.items():
            self._store.put(f"{PREFIX}/versions/{bundle.version}/{name}", body)
        if promote is None:
            promote = self._beats_champion(bundle)
        self._point("latest", bundle.version)
        if promote:
            self._point("champion", bundle.version)
        return bundle.version

    def _beats_champion(self, bundle: ModelBundle) -> bool:
        champion = self.resolve("champion")
        if champion is None:
            return True
        raw = self._store.get(f"{PREFIX}/versions/{champion}/{META_FILE}")
        if raw is None:
            return True
        old = json.loads(raw).get("metrics", {}).get("test", {}).get(CHAMPION_METRIC, 0.0)
        return bundle.metrics.get("test", {}).get(CHAMPION_METRIC, 0.0) >= old

    def _point(self, pointer: str, version: str) -> None:
        self._store.put(f"{PREFIX}/pointers/{pointer}", version.encode())

    def promote(self, version: str) -> None:
        if version not in self.versions():
            raise ModelNotFound(f"no model version {version!r} in {self.location}")
        self._point("champion", version)

    def rollout(self) -> tuple[dict[str, Any] | None, str | None]:
        """The stored rollout state (a JSON object beside the pointers; None when no rollout was ever set) and the
        tag a conditional ``put_rollout`` expects."""
        raw, tag = self._store.get_tagged(f"{PREFIX}/pointers/{ROLLOUT_FILE}")
        return (json.loads(raw) if raw else None), tag

    def put_rollout(self, state: dict[str, Any], *, expected: str | None) -> None:
        """Store the rollout state only if it is still the one read with tag ``expected`` (None: none stored),
        so the guard and an operator changing it at once never lose either change silently (``StaleWrite``)."""
        self._store.put_if(f"{PREFIX}/pointers/{ROLLOUT_FILE}", json.dumps(state, indent=2).encode(), expected)

    def clear_rollout(self) -> None:
        """Remove the rollout state (the settings' static challenger applies again)."""
        self._store.delete(f"{PREFIX}/pointers/{ROLLOUT_FILE}")

    def resolve(self, ref: str) -> str | None:
        """A pointer name or a version -> the version, or None when there is no such pointer."""
        if ref in POINTERS:
            raw = self._store.get(f"{PREFIX}/pointers/{ref}")
            return raw.decode().strip() if raw else None
        return ref

    def versions(self) -> list[str]:
        return sorted({key.split("/")[2] for key in self._store.keys(f"{PREFIX}/versions/")})

    def metadata(self, ref: str = "champion") -> dict[str, Any]:
        """A version's ``bundle.json`` (metrics, data summary, ensemble) without loading its models."""
        version = self.resolve(ref)
        raw = self._store.get(f"{PREFIX}/versions/{version}/{META_FILE}") if version else None
        if raw is None:
            raise ModelNotFound(f"no {ref!r} model in {self.location}")
        return json.loads(raw)

    def attachment(self, version: str, name: str) -> bytes | None:
        """A file registered beside a version's models (e.g. ``report/evaluation.png``), or None."""
        return self._store.get(f"{PREFIX}/versions/{version}/{name}")

    def load(self, ref: str = "champion", *, expected_feature_version: str | None = None) -> ModelBundle:
        """Load a version; refuses one trained on another feature spec than the running one."""
        version = self.resolve(ref)
        if version is None:
            raise ModelNotFound(f"no {ref!r} model in {self.location}; run `fraudctl train` first")
        files = {}
        for name in (XGB_FILE, AE_FILE, META_FILE):
            body = self._store.get(f"{PREFIX}/versions/{version}/{name}")
            if body is None:
                raise ModelNotFound(f"model version {version!r} in {self.location} has no {name}")
            files[name] = body
        bundle = ModelBundle.from_files(files)
        expected = expected_feature_version or FEATURE_VERSION
        if bundle.feature_version != expected:
            raise FeatureVersionMismatch(
                f"model {version} was trained on feature spec {bundle.feature_version}, but the running feature "
                f"spec is {expected}: retrain with `fraudctl train`"
            )
        return bundle


def registry_for(settings: Settings) -> ModelRegistry:
    """The S3 bucket on real AWS (or an explicit endpoint); a folder in the data dir otherwise, so models outlive
    the embedded AWS, whose state ends with the process."""
    if settings.uses_real_aws:
        return ModelRegistry(settings)
    return ModelRegistry(root=Path(settings.data_dir) / "registry")
