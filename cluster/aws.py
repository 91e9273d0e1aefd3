"""AWS access through boto3 only: one client factory, the embedded moto server, idempotent bootstrap.

With no real AWS configured, moto's server runs on loopback and speaks the real Kinesis, DynamoDB, SNS and S3
wire protocols, so exactly the same code talks to real AWS once credentials or an endpoint are configured.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from cluster.config import Settings, get_settings

EMULATOR_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class EmbeddedAWS:
    """moto's threaded server on a free loopback port."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None):
        self.host = host
        self.port = port or free_port(host)
        self._server: Any = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> str:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        self._server.start()
        return self.endpoint_url

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> "EmbeddedAWS":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def client(service: str, settings: Settings | None = None) -> Any:
    """A boto3 client for ``service`` pointed at the configured endpoint (cached per process, thread-safe)."""
    settings = settings or get_settings()
    return _cached_client(service, settings.region, settings.aws_endpoint_url,
                          settings.aws_access_key_id is None and settings.aws_profile is None)


@lru_cache(maxsize=32)
def _cached_client(service: str, region: str, endpoint_url: str | None, emulator_credentials: bool) -> Any:
    kwargs: dict[str, Any] = {
        "region_name": region,
        "config": BotoConfig(retries={"max_attempts": 8, "mode": "standard"}, max_pool_connections=64,
                             connect_timeout=5, read_timeout=30),
    }
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
        if emulator_credentials:
            kwargs.update(EMULATOR_CREDENTIALS)
    return boto3.session.Session().client(service, **kwargs)


@dataclass(frozen=True)
class Resources:
    stream_arn: str
    decisions_stream_arn: str
    topic_arn: str


def bootstrap(settings: Settings | None = None) -> Resources:
    """Create every stream, table, topic and bucket the system needs; existing ones are left as they are."""
    settings = settings or get_settings()
    stream_arn = _ensure_stream(settings, settings.stream_name, settings.stream_shards)
    decisions_arn = _ensure_stream(settings, settings.decisions_stream_name, settings.stream_shards)
    for table, key in (
        (settings.user_table, "user_id"),
        (settings.merchant_table, "merchant_id"),
        (settings.lease_table, "shard_id"),
        (settings.alert_ledger_table, "transaction_id"),
    ):
        _ensure_table(settings, table, key)
    topic_arn = client("sns", settings).create_topic(Name=settings.alert_topic)["TopicArn"]
    _ensure_bucket(settings, settings.model_bucket)
    return Resources(stream_arn=stream_arn, decisions_stream_arn=decisions_arn, topic_arn=topic_arn)


def _ensure_stream(settings: Settings, name: str, shards: int) -> str:
    kinesis = client("kinesis", settings)
    try:
        kinesis.create_stream(StreamName=name, ShardCount=shards)
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceInUseException":
            raise
    kinesis.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    return kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamARN"]


def _ensure_table(settings: Settings, name: str, key: str) -> None:
    dynamodb = client("dynamodb", settings)
    try:
        dynamodb.create_table(
            TableName=name,
            KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceInUseException":
            raise
    dynamodb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})


def _ensure_bucket(settings: Settings, name: str) -> None:
    s3 = client("s3", settings)
    try:
        if settings.region == "us-east-1":
            s3.create_bucket(Bucket=name)
        else:
            s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": settings.region})
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise


def wait_until_reachable(endpoint_url: str, timeout_s: float = 10.0) -> None:
    host, port = endpoint_url.rsplit("//", 1)[1].split(":")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
