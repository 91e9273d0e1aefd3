"""Session-wide fixtures: one embedded AWS endpoint and one local Ray per test session (both are slow to start)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cluster.config import Settings
from cluster.waiting import free_port, wait_until

API_KEY = "test-key"
SLOW_FOLDERS = ("model", "system")  # training, Serve, streams, multi-node, browser; and anything needing Ray


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.parent.name in SLOW_FOLDERS or "ray_session" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def aws_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings pointing at moto's server on a free loopback port, with every resource bootstrapped."""
    from cluster.runtime import aws_endpoint

    base = Settings(
        aws_mode="embedded",
        data_dir=tmp_path_factory.mktemp("fraud-data"),
        serve_haproxy_stats_port=free_port(),
        serve_haproxy_metrics_port=free_port(),
    )
    with aws_endpoint(base) as settings:
        yield settings


@pytest.fixture(scope="session")
def ray_session(aws_settings: Settings) -> Iterator[Settings]:
    """A local Ray whose workers see the embedded AWS endpoint through the FRAUD_* environment."""
    from cluster.runtime import ray_runtime

    with ray_runtime(aws_settings, num_cpus=2):
        yield aws_settings


@pytest.fixture(scope="session")
def small_history():
    """Three weeks of 300 simulated users with a raised fraud rate: enough signal for small real models."""
    from simulation.generator import SimulationConfig, simulate_history

    return simulate_history(SimulationConfig(n_users=300, days=21, seed=5, fraud_rate=0.03))


def train_small_bundle(settings: Settings, history, *, rounds: int = 60, seed: int = 1, promote: bool = True) -> str:
    """A real bundle from the training code with a fixed small budget instead of a Tune search."""
    from datetime import timedelta

    import numpy as np

    from cluster.features import FEATURE_NAMES, FEATURE_VERSION, build_features
    from training.autoencoder import AnomalyScorer
    from training.ensemble import fit_ensemble, merchant_record
    from training.predict import FraudScorer
    from training.reference import build_reference, input_missing_rates
    from training.registry import ModelBundle, registry_for
    from training.xgb import fit_xgboost, rising_with_merchant_fraud

    transactions = history.transactions.reset_index(drop=True)
    features = build_features(
        transactions,
        label_delay=timedelta(days=settings.label_delay_days),
        users=history.users,
        merchants=history.merchants,
    )
    x = features[list(FEATURE_NAMES)].to_numpy(np.float32)
    y = transactions["is_fraud"].to_numpy(np.int8)
    cut = int(len(x) * 0.6)
    params = {"max_depth": 4, "eta": 0.2, **rising_with_merchant_fraud(FEATURE_NAMES)}
    booster = fit_xgboost(x[:cut], y[:cut], FEATURE_NAMES, params, rounds, seed=seed)
    anomaly = AnomalyScorer.fit(x[:cut], y[:cut], {"lr": 3e-3, "weight_decay": 1e-6}, 2, seed=seed, max_rows=20_000)
    ensemble, _ = fit_ensemble(
        y[cut:],
        booster.inplace_predict(x[cut:]).astype(np.float64),
        anomaly.score(x[cut:]),
        transactions["amount"].to_numpy()[cut:],
        anomaly_review_rate=0.005,  # the served test bundles carry the lane, so serving and the SDK exercise it
        record=merchant_record(x[cut:], FEATURE_NAMES),  # and the merchant floor, where validation keeps it
    )
    bundle = ModelBundle(
        booster=booster,
        anomaly=anomaly,
        ensemble=ensemble,
        feature_names=FEATURE_NAMES,
        feature_version=FEATURE_VERSION,
    )
    held_out_scores = FraudScorer(bundle).score(features.iloc[cut:])["fraud_score"].to_numpy()
    bundle.reference = build_reference(
        x[:cut], FEATURE_NAMES, held_out_scores, inputs=input_missing_rates(transactions.iloc[:cut])
    )
    return registry_for(settings).register(bundle, promote=promote)


@pytest.fixture(scope="session")
def champion_model(ray_session: Settings, small_history) -> str:
    """Profiles in DynamoDB and a small real model registered as champion; returns its version."""
    from cluster.profiles import MERCHANT_PROFILE_COLUMNS, USER_PROFILE_COLUMNS, put_profiles

    put_profiles(ray_session.user_table, small_history.users[list(USER_PROFILE_COLUMNS)], ray_session)
    put_profiles(ray_session.merchant_table, small_history.merchants[list(MERCHANT_PROFILE_COLUMNS)], ray_session)
    return train_small_bundle(ray_session, small_history)


@pytest.fixture(scope="session")
def served(ray_session: Settings, champion_model: str) -> Iterator[tuple[str, Settings]]:
    """The Serve app on a free port, healthy, for the whole session (its API key is ``API_KEY``; the challenger is
    ``latest`` while no rollout state is stored; its rollout guard checks twice a second and tries promotion every
    2 s); yields its base URL and settings."""

    import requests

    from cluster.waiting import free_port
    from serve.app import build_app
    from serve.runtime import serving

    settings = ray_session.model_copy(
        update={
            "api_port": free_port(),
            "api_key": API_KEY,
            "serve_max_body_bytes": 1_000_000,
            "challenger": "latest",
            "serve_target_ongoing_requests": 2.0,
            "serve_upscale_delay_s": 1.0,
            "serve_downscale_delay_s": 3.0,
            "serve_max_replicas": 2,
            "serve_model_refresh_s": 1.0,
            "rollout_guard_interval_s": 0.5,
            "rollout_promote_check_s": 2.0,
        }
    )
    with serving(settings, build_app(settings), name="fraud-test") as url:
        wait_until(
            lambda: requests.get(f"{url}/healthz", timeout=30).status_code == 200,
            timeout_s=120,
            interval_s=0.5,
            what="the app healthy",
        )
        yield url, settings
