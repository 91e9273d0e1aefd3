"""Start and stop what every job needs: the AWS endpoint (embedded unless real AWS is configured) and Ray."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray

from cluster.aws import EmbeddedAWS, bootstrap
from cluster.config import Settings, get_settings, use_settings

log = logging.getLogger(__name__)

ACTOR_NAMESPACE = "fraud"  # the named actors every job shares: feature state, stats, the alert desk


@contextmanager
def aws_endpoint(settings: Settings | None = None) -> Iterator[Settings]:
    """Yield settings pointing at a ready AWS: real AWS as configured, or moto's server on loopback."""
    settings = settings or get_settings()
    embedded: EmbeddedAWS | None = None
    if not settings.uses_real_aws:
        embedded = EmbeddedAWS()
        settings = settings.model_copy(update={"aws_endpoint_url": embedded.start(), "embedded_aws": True})
        log.info("embedded AWS (moto) listening on %s", settings.aws_endpoint_url)
    previous = get_settings()
    use_settings(settings)
    try:
        bootstrap(settings)
        yield settings
    finally:
        use_settings(previous)
        if embedded is not None:
            embedded.stop()


@contextmanager
def ray_runtime(settings: Settings, *, num_cpus: int | None = None) -> Iterator[None]:
    """Local Ray (or the cluster in RAY_ADDRESS) whose workers inherit these settings."""
    started = not ray.is_initialized()
    if started:
        ray.init(
            num_cpus=num_cpus,
            runtime_env={"env_vars": settings.as_env()},
            include_dashboard=False,
            log_to_driver=True,
            configure_logging=False,
        )
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def cluster_desk(actor_class: type, name: str, *args: Any) -> Any:
    """The cluster's one ``actor_class`` actor named ``name``, the only writer of what it guards: started by its
    first caller and found by the others, detached (it outlives the job that started it), restarted by Ray with the
    calls in flight retried if its node is lost. The alert desk and the case desk run so."""
    return (
        ray.remote(actor_class)
        .options(
            name=name,
            namespace=ACTOR_NAMESPACE,
            get_if_exists=True,
            lifetime="detached",
            num_cpus=0,
            max_restarts=-1,
            max_task_retries=-1,
        )
        .remote(*args)
    )


def desk_name(kind: str, settings: Settings, *resources: str) -> str:
    """A desk's actor name: one per endpoint, region and the ``resources`` it writes."""
    key = "|".join((settings.aws_endpoint_url or "aws", settings.region, *resources))
    return f"{kind}-desk-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
