"""AWS access through boto3 only: one client factory, the embedded moto server, idempotent bootstrap.

With no real AWS configured, moto's server runs on loopback and speaks the real Kinesis, DynamoDB, SNS and S3
wire protocols, so exactly the same code talks to real AWS once credentials or an endpoint are configured.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from cluster.config import Settings, get_settings
from cluster.waiting import backoff_s, free_port, port_in_use, wait_until

EMULATOR_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
# The review queue's indexes (``serve.cases``): both keyed by a case's status, sorted by the named attribute
CASES_BY_RISK, CASES_BY_SINCE = "by-risk", "by-since"
CASE_INDEXES = {CASES_BY_RISK: "risk_rank", CASES_BY_SINCE: "since"}
LIST_EXPIRY_ATTRIBUTE = "expires_at"  # a list value's expiry (epoch seconds): the lists table's TTL attribute


class EmbeddedAWS:
    """moto's server (``cluster.emulator``: moto's application behind waitress) on a free loopback port, in a
    child process of its own.

    A process rather than moto's in-process thread: the emulator then has its own interpreter lock, so the driver's
    work (progress, supervision, the dashboard) and the emulator's request handling do not take turns on one core.
    On Linux the child is told to exit when the thread that started it dies (start it from the main thread), so a
    killed job leaves no emulator behind. It runs in a session of its own: Ctrl-C in a terminal signals the whole
    foreground process group, and an emulator that died with it would refuse the writes the job's actors are still
    draining (review cases, alerts) before the job stops it last.
    """

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, start_timeout_s: float = 60.0):
        self.host = host
        self.port = port or free_port(host)
        self.start_timeout_s = start_timeout_s
        self._process: subprocess.Popen | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> str:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "cluster.emulator", "--host", self.host, "--port", str(self.port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_exit_with_parent,
            start_new_session=True,  # a terminal's Ctrl-C reaches the job, which stops the emulator after draining
        )
        try:
            wait_until(
                self._listening,
                timeout_s=self.start_timeout_s,
                interval_s=0.05,
                what=f"moto server listening on {self.endpoint_url}",
            )
        except TimeoutError:
            self.stop()
            raise
        return self.endpoint_url

    def _listening(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise RuntimeError(f"moto server exited with code {self._process.returncode} on start")
        return port_in_use(self.host, self.port, timeout_s=0.2)

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def __enter__(self) -> "EmbeddedAWS":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _exit_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (Linux ``PR_SET_PDEATHSIG``; elsewhere a no-op)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def client(service: str, settings: Settings | None = None) -> Any:
    """A boto3 client for ``service`` pointed at the configured endpoint (cached per process, thread-safe)."""
    settings = settings or get_settings()
    return _cached_client(
        service,
        settings.region,
        settings.aws_endpoint_url,
        settings.aws_access_key_id is None and settings.aws_profile is None,
    )


@lru_cache(maxsize=32)
def _cached_client(service: str, region: str, endpoint_url: str | None, emulator_credentials: bool) -> Any:
    kwargs: dict[str, Any] = {
        "region_name": region,
        "config": BotoConfig(
            retries={"max_attempts": 8, "mode": "standard"}, max_pool_connections=64, connect_timeout=5, read_timeout=30
        ),
    }
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
        if emulator_credentials:
            kwargs.update(EMULATOR_CREDENTIALS)
    return boto3.session.Session().client(service, **kwargs)


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """``items`` in slices of at most ``size``: the per-call limits of DynamoDB's and SNS's batch calls."""
    return (items[start : start + size] for start in range(0, len(items), size))


def until_processed(
    call: Callable[[dict[str, Any]], dict[str, Any]],
    request_items: dict[str, Any],
    *,
    unprocessed: str,
    max_attempts: int = 10,
) -> list[dict[str, Any]]:
    """A DynamoDB batch call (``batch_write_item`` / ``batch_get_item``) repeated on what it left unprocessed
    (``UnprocessedItems`` / ``UnprocessedKeys``: partial throttling), backing off between tries; returns every
    response. Raises if items are still unprocessed after ``max_attempts``."""
    responses: list[dict[str, Any]] = []
    pending = request_items
    for attempt in range(max_attempts):
        response = call(RequestItems=pending)
        responses.append(response)
        pending = response.get(unprocessed) or {}
        if not pending:
            return responses
        time.sleep(backoff_s(attempt))
    raise RuntimeError(f"DynamoDB left items unprocessed after {max_attempts} attempts ({unprocessed})")


@dataclass(frozen=True)
class Resources:
    stream_arn: str
    decisions_stream_arn: str
    ingest_stream_arn: str
    topic_arn: str
    drift_topic_arn: str


def bootstrap(settings: Settings | None = None) -> Resources:
    """Create every stream, table, topic and bucket the system needs; existing ones are left as they are."""
    settings = settings or get_settings()
    stream_arn = _ensure_stream(settings, settings.stream_name, settings.stream_shards)
    decisions_arn = _ensure_stream(settings, settings.decisions_stream_name, settings.stream_shards)
    ingest_arn = _ensure_stream(settings, settings.ingest_stream_name, settings.stream_shards)
    for table, key in (
        (settings.user_table, "user_id"),
        (settings.merchant_table, "merchant_id"),
        (settings.lease_table, "shard_id"),
        (settings.alert_ledger_table, "transaction_id"),
        (settings.rules_table, "name"),
    ):
        _ensure_table(settings, table, key)
    _ensure_table(settings, settings.lists_table, "list", sort_key="value")
    _ensure_time_to_live(settings, settings.lists_table, LIST_EXPIRY_ATTRIBUTE)
    _ensure_table(
        settings,
        settings.cases_table,
        "case_id",
        indexes={name: ("status", sort_key) for name, sort_key in CASE_INDEXES.items()},
    )
    sns = client("sns", settings)
    topic_arn = sns.create_topic(Name=settings.alert_topic)["TopicArn"]
    drift_topic_arn = sns.create_topic(Name=settings.drift_topic)["TopicArn"]
    _ensure_bucket(settings, settings.model_bucket)
    return Resources(
        stream_arn=stream_arn,
        decisions_stream_arn=decisions_arn,
        ingest_stream_arn=ingest_arn,
        topic_arn=topic_arn,
        drift_topic_arn=drift_topic_arn,
    )


def _ensure_stream(settings: Settings, name: str, shards: int) -> str:
    kinesis = client("kinesis", settings)
    try:
        kinesis.create_stream(StreamName=name, ShardCount=shards)
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceInUseException":
            raise
    kinesis.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    return kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamARN"]


def _ensure_table(
    settings: Settings,
    name: str,
    key: str,
    *,
    sort_key: str | None = None,
    indexes: dict[str, tuple[str, str]] | None = None,
) -> None:
    """A table keyed by string attributes, with global secondary ``indexes`` (name -> hash and range key, every
    attribute projected)."""
    dynamodb = client("dynamodb", settings)
    keys = [(key, "HASH")] + ([(sort_key, "RANGE")] if sort_key else [])
    indexed = {attribute for pair in (indexes or {}).values() for attribute in pair}
    extra: dict[str, Any] = (
        {
            "GlobalSecondaryIndexes": [
                {
                    "IndexName": index,
                    "Projection": {"ProjectionType": "ALL"},
                    "KeySchema": [
                        {"AttributeName": hash_key, "KeyType": "HASH"},
                        {"AttributeName": range_key, "KeyType": "RANGE"},
                    ],
                }
                for index, (hash_key, range_key) in indexes.items()
            ]
        }
        if indexes
        else {}
    )
    try:
        dynamodb.create_table(
            TableName=name,
            KeySchema=[{"AttributeName": k, "KeyType": kind} for k, kind in keys],
            AttributeDefinitions=[
                {"AttributeName": k, "AttributeType": "S"}
                for k in dict.fromkeys([k for k, _ in keys] + sorted(indexed))
            ],
            BillingMode="PAY_PER_REQUEST",
            **extra,
        )
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceInUseException":
            raise
    dynamodb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})


def _ensure_time_to_live(settings: Settings, table: str, attribute: str) -> None:
    """DynamoDB deletes an item some time after the epoch seconds in ``attribute`` pass (readers still filter by
    expiry: the deletion can lag by days). Enabling it twice is an error on AWS, so it is enabled only when off."""
    dynamodb = client("dynamodb", settings)
    status = dynamodb.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
    if status.get("TimeToLiveStatus") in ("ENABLED", "ENABLING"):
        return
    dynamodb.update_time_to_live(TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": attribute})


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
