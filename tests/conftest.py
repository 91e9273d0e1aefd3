"""Session-wide fixtures: one embedded AWS endpoint and one local Ray per test session (both are slow to start)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cluster.config import Settings


@pytest.fixture(scope="session")
def aws_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings pointing at moto's server on a free loopback port, with every resource bootstrapped."""
    from cluster.runtime import aws_endpoint

    base = Settings(aws_mode="embedded", data_dir=tmp_path_factory.mktemp("fraud-data"))
    with aws_endpoint(base) as settings:
        yield settings


@pytest.fixture(scope="session")
def ray_session(aws_settings: Settings) -> Iterator[Settings]:
    """A local Ray whose workers see the embedded AWS endpoint through the FRAUD_* environment."""
    from cluster.runtime import ray_runtime

    with ray_runtime(aws_settings, num_cpus=2):
        yield aws_settings
