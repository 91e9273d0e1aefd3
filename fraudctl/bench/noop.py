"""The benchmark's yardsticks, in the scoring app's Serve mode: a composed no-op app with the real app's shape
(ingress -> two deployments in parallel), so ``fraudctl bench`` can report what the scoring itself costs, and a
single no-op deployment, the least a Serve request can cost.

No ``from __future__ import annotations``: FastAPI must see real annotations on the ingress methods.
"""

import asyncio
from typing import Any

from fastapi import FastAPI, Request
from ray import serve

from cluster.config import Settings
from serve.runtime import serve_env

noop_api = FastAPI(title="no-op yardstick")
single_api = FastAPI(title="single no-op yardstick")


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=512)
class NoOpStage:
    async def __call__(self, payload: Any) -> Any:
        return payload


@serve.deployment(ray_actor_options={"num_cpus": 0.2}, max_ongoing_requests=512)
@serve.ingress(noop_api)
class NoOpIngress:
    def __init__(self, left: Any, right: Any):
        self.left, self.right = left, right

    @noop_api.post("/api/check-fraud")
    async def check(self, request: Request) -> dict[str, Any]:
        body = await request.json()
        await asyncio.gather(self.left.remote(1), self.right.remote(2))
        return {"transaction_id": body.get("transaction_id")}


@serve.deployment(ray_actor_options={"num_cpus": 0.2}, max_ongoing_requests=512)
@serve.ingress(single_api)
class SingleNoOp:
    @single_api.post("/api/check-fraud")
    async def check(self, request: Request) -> dict[str, Any]:
        body = await request.json()
        return {"transaction_id": body.get("transaction_id")}


def build_single_noop_app(settings: Settings) -> Any:
    return SingleNoOp.options(
        ray_actor_options={"num_cpus": 0.2, "runtime_env": {"env_vars": serve_env(settings)}}
    ).bind()


def build_noop_app(settings: Settings) -> Any:
    """The yardstick in the scoring app's Serve mode (the same replica environment)."""
    env = {"runtime_env": {"env_vars": serve_env(settings)}}
    return NoOpIngress.options(ray_actor_options={"num_cpus": 0.2, **env}).bind(
        *(
            NoOpStage.options(name=name, ray_actor_options={"num_cpus": 0.1, **env}).bind()
            for name in ("NoOpLeft", "NoOpRight")
        )
    )
