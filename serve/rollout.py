"""Guarded gradual rollout: which challenger serves how much traffic, the guard that rolls it back by itself, and
promotion on labelled feedback.

The state has one home, a JSON object beside the registry's pointers (``ModelRegistry.rollout``)::

    {"version", "share", "mode": "shadow"|"canary"|"rolled_back"|"promoted", "since", "events": [...]}

Every ingress replica and stream consumer re-reads it with the champion pointer (every ``serve_model_refresh_s``)
and answers a transaction from the challenger when ``in_canary(transaction_id, share)``: the same draw on HTTP and
on the stream, so a transaction gets the same model on both. Without a stored state the static settings
(``FRAUD_CHALLENGER``, ``FRAUD_CANARY_SHARE``) are the default. The transitions are pure functions (tested alone);
``RolloutStore`` stores and logs them; ``RolloutGuard`` is the one actor that applies them on its own. Every write
is conditional on the state read before it (S3's conditional put): an operator's ``fraudctl rollout`` landing
while the guard measures the previous rollout is never undone by the guard's verdict on what it measured.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

import httpx
import pandas as pd
import ray

from cluster.config import Settings, use_settings
from cluster.runtime import ACTOR_NAMESPACE
from serve.api import API_KEY_HEADER
from serve.champion import DECISIONS_PREFIX, FEEDBACK_PREFIX, compare, read_log
from serve.scoring import ModelSet
from serve.stats import stats_actor
from training.registry import ModelNotFound, StaleWrite, registry_for

log = logging.getLogger(__name__)

Mode = Literal["shadow", "canary", "rolled_back", "promoted"]
SERVING_MODES = ("shadow", "canary")
MAX_EVENTS = 100  # the newest state changes kept in the state itself (all of them go to the log)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class RolloutState:
    version: str | None
    share: float
    mode: Mode
    since: str | None
    events: tuple[dict[str, Any], ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "events": list(self.events)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RolloutState":
        return cls(
            version=values.get("version"),
            share=float(values.get("share", 0.0)),
            mode=values["mode"],
            since=values.get("since"),
            events=tuple(values.get("events", ())),
        )

    @property
    def serving(self) -> bool:
        """Whether the challenger is scored at all (in shadow its answers are only logged)."""
        return self.version is not None and self.mode in SERVING_MODES

    @property
    def served_share(self) -> float:
        return self.share if self.serving else 0.0


def _moved(
    state: RolloutState | None, *, version: str | None, share: float, mode: Mode, reason: str, at: str
) -> RolloutState:
    event = {
        "at": at,
        "from": state.mode if state else None,
        "to": mode,
        "version": version,
        "share": share,
        "reason": reason,
    }
    return RolloutState(
        version=version,
        share=share,
        mode=mode,
        since=at,
        events=((state.events if state else ()) + (event,))[-MAX_EVENTS:],
    )


def start_rollout(state: RolloutState | None, version: str, share: float, reason: str, at: str) -> RolloutState:
    """Serve ``share`` of traffic from ``version``; share 0 is shadow (scored and logged, never answered)."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be between 0 and 1, got {share}")
    return _moved(state, version=version, share=share, mode="canary" if share > 0 else "shadow", reason=reason, at=at)


def roll_back(state: RolloutState, reason: str, at: str) -> RolloutState:
    """Stop serving the challenger (share 0); only a serving rollout can be rolled back."""
    if not state.serving:
        raise ValueError(f"nothing to roll back: the rollout is {state.mode}")
    return _moved(state, version=state.version, share=0.0, mode="rolled_back", reason=reason, at=at)


def record_promotion(state: RolloutState | None, version: str, reason: str, at: str) -> RolloutState:
    """``version`` is the champion now: no challenger serves until the next rollout."""
    return _moved(state, version=version, share=0.0, mode="promoted", reason=reason, at=at)


@dataclass(frozen=True)
class GuardBounds:
    """A challenger's served rows stay within these bounds of the champion's, once both have ``min_rows``."""

    min_rows: int
    rate_factor: float
    rate_slack: float
    error_slack: float
    latency_factor: float
    latency_slack_ms: float

    @classmethod
    def from_settings(cls, settings: Settings) -> "GuardBounds":
        return cls(
            min_rows=settings.rollout_min_rows,
            rate_factor=settings.rollout_rate_factor,
            rate_slack=settings.rollout_rate_slack,
            error_slack=settings.rollout_error_slack,
            latency_factor=settings.rollout_latency_factor,
            latency_slack_ms=settings.rollout_latency_slack_ms,
        )


def guard_verdict(
    champion: dict[str, Any] | None, challenger: dict[str, Any] | None, bounds: GuardBounds
) -> str | None:
    """The reason to roll back, or None. Each side is a ``StatsCollector.models_since`` entry: rows, decisions,
    alert_rate, review_rate, error_rate, latency_p99_ms. Nothing is judged before both sides have ``min_rows``."""
    if not champion or not challenger or min(champion["rows"], challenger["rows"]) < bounds.min_rows:
        return None
    if challenger["error_rate"] > champion["error_rate"] + bounds.error_slack:
        return (
            f"error rate {challenger['error_rate']:.4f} > champion's {champion['error_rate']:.4f} "
            f"+ {bounds.error_slack}"
        )
    for rate, label in (("alert_rate", "alert (HIGH) rate"), ("review_rate", "review (MEDIUM) rate")):
        limit = bounds.rate_factor * champion[rate] + bounds.rate_slack
        if challenger[rate] > limit:
            return (
                f"{label} {challenger[rate]:.4f} > {bounds.rate_factor} x champion's {champion[rate]:.4f} "
                f"+ {bounds.rate_slack}"
            )
    ours, theirs = challenger.get("latency_p99_ms"), champion.get("latency_p99_ms")
    if ours is not None and theirs is not None and ours > bounds.latency_factor * theirs + bounds.latency_slack_ms:
        return (
            f"latency p99 {ours:.1f} ms > {bounds.latency_factor} x champion's {theirs:.1f} ms "
            f"+ {bounds.latency_slack_ms} ms"
        )
    return None


def promotion_verdict(report: dict[str, Any], *, min_labels: int) -> str | None:
    """The reason to promote, or None: McNemar's test (``serve.champion.compare``) on at least ``min_labels``
    labelled transactions is significant and the challenger is the one right more often."""
    significance = report.get("significance")
    if not significance or report["labelled"] < min_labels or not significance["significant"]:
        return None
    if significance["only_challenger_correct"] <= significance["only_champion_correct"]:
        return None
    return (
        f"McNemar p={significance['p_value']} < {significance['alpha']} on {report['labelled']} labels: "
        f"challenger alone right {significance['only_challenger_correct']}, champion alone right "
        f"{significance['only_champion_correct']}"
    )


class RolloutStore:
    """Reads and writes the rollout state in the registry; every change is logged and kept in ``events``."""

    CHANGE_ATTEMPTS = 5  # an operator's change re-reads and re-applies this often while others write

    def __init__(self, settings: Settings):
        self.settings = settings
        self.registry = registry_for(settings)

    def read(self) -> tuple[RolloutState | None, str | None]:
        """The stored state (None when none is) and the tag a conditional write expects."""
        raw, tag = self.registry.rollout()
        return (RolloutState.from_dict(raw) if raw else None), tag

    def stored(self) -> RolloutState | None:
        return self.read()[0]

    def default(self) -> RolloutState:
        """The static settings' challenger, which applies while no state is stored."""
        share = self.settings.canary_share if self.settings.challenger else 0.0
        return RolloutState(
            version=self.settings.challenger, share=share, mode="canary" if share > 0 else "shadow", since=None
        )

    def current(self) -> RolloutState:
        """The stored state, or the static settings' challenger when none is stored (a pointer like ``latest``
        is resolved by whoever serves it)."""
        return self.stored() or self.default()

    def write_if_unchanged(self, state: RolloutState, tag: str | None) -> RolloutState:
        """Store ``state`` only over the state read with ``tag``; ``StaleWrite`` when another write came first."""
        self.registry.put_rollout(state.to_dict(), expected=tag)
        event = state.events[-1]
        log.warning(
            "rollout %s -> %s: version %s, share %s (%s)",
            event["from"],
            event["to"],
            event["version"],
            event["share"],
            event["reason"],
        )
        return state

    def _change(self, change: Callable[[RolloutState | None], RolloutState]) -> RolloutState:
        """Apply ``change`` to the state as stored now, re-reading when another write lands in between."""
        for _ in range(self.CHANGE_ATTEMPTS):
            stored, tag = self.read()
            try:
                return self.write_if_unchanged(change(stored), tag)
            except StaleWrite:
                log.info("rollout state changed while it was being changed; reading it again")
        raise StaleWrite(f"the rollout state changed {self.CHANGE_ATTEMPTS} times during one change; try again")

    def start(self, version: str, share: float, reason: str) -> RolloutState:
        if version not in self.registry.versions():
            raise ModelNotFound(f"no model version {version!r} in {self.registry.location}")
        return self._change(lambda stored: start_rollout(stored, version, share, reason, now_iso()))

    def roll_back(self, reason: str) -> RolloutState:
        return self._change(lambda stored: roll_back(stored or self.default(), reason, now_iso()))

    def promoted(self, version: str, reason: str) -> RolloutState:
        return self._change(lambda stored: record_promotion(stored, version, reason, now_iso()))

    def clear(self) -> None:
        """Forget the stored state (the settings' static challenger applies again)."""
        self.registry.clear_rollout()
        log.warning("rollout state cleared")


@dataclass(frozen=True)
class Routing:
    """Who answers what: the champion's version, the challenger's (None when it is not scored) and its share."""

    champion: str | None
    challenger: str | None
    share: float


def read_routing(store: RolloutStore, models: ModelSet) -> Routing:
    """The champion pointer and the rollout state, as the ingress and the stream consumers follow them."""
    champion = models.resolve("champion")
    state = store.current()
    challenger = models.resolve(state.version) if state.serving and state.version else None
    if challenger == champion:
        challenger = None
    return Routing(champion=champion, challenger=challenger, share=state.served_share if challenger else 0.0)


def served_rows_since(settings: Settings, version: str, since: str | None) -> pd.DataFrame:
    """Logged champion/challenger decisions of ``version`` since the rollout started."""
    decisions = read_log(settings, DECISIONS_PREFIX, since=since)
    if decisions.empty:
        return decisions
    keep = decisions["challenger_version"] == version
    if since:
        keep &= pd.to_datetime(decisions["logged_at"], utc=True) >= pd.Timestamp(since)
    return decisions[keep]


class RolloutGuard:
    """Watches the rollout: every ``rollout_guard_interval_s`` it compares the challenger's served rows with the
    champion's (the stats actor's per-model window) and rolls back on a breached bound; every
    ``rollout_promote_check_s`` it runs the significance test on labelled feedback and promotes a better
    challenger. Run it as the cluster's one ``rollout_guard`` actor."""

    def __init__(self, settings: Settings):
        use_settings(settings)
        self.settings = settings
        self.store = RolloutStore(settings)
        self.models = ModelSet(settings)
        self.bounds = GuardBounds.from_settings(settings)
        self.stats = stats_actor()
        self._last_promotion_check = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="rollout-guard", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            time.sleep(self.settings.rollout_guard_interval_s)
            try:
                self.check_guardrails()
                if time.monotonic() - self._last_promotion_check >= self.settings.rollout_promote_check_s:
                    self._last_promotion_check = time.monotonic()
                    self.check_promotion()
            except Exception:  # a guard that dies silently guards nothing: log and keep watching
                log.exception("rollout guard round failed")

    def measured(self, state: RolloutState) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """(champion, challenger) figures over the rows served since the rollout started, within the window."""
        start = time.time() - self.settings.rollout_window_s
        if state.since:
            start = max(start, pd.Timestamp(state.since).timestamp())
        figures = ray.get(self.stats.models_since.remote(start))
        champion = self.models.resolve("champion")
        challenger = self.models.resolve(state.version) if state.version else None
        return figures.get(champion), figures.get(challenger) if challenger != champion else None

    def status(self) -> dict[str, Any]:
        """The rollout as the guard sees it now: the state, each side's figures since it started and the bound
        the challenger breaches (what the next round acts on, for a canary)."""
        stored = self.store.stored()
        state = stored or self.store.default()
        champion, challenger = self.measured(state)  # the champion's figures even with no challenger
        return {
            **state.to_dict(),
            "stored": stored is not None,
            "champion": self.models.resolve("champion"),
            "window_s": self.settings.rollout_window_s,
            "live": {"champion": _figures(champion), "challenger": _figures(challenger)},
            "verdict": guard_verdict(champion, challenger, self.bounds),
        }

    def check_guardrails(self) -> str | None:
        """Roll a canary back when it breaches a bound; returns the reason, if it did. The verdict applies to the
        rollout it measured only: one changed meanwhile is judged afresh next round."""
        stored, tag = self.store.read()
        state = stored or self.store.default()
        if state.mode != "canary" or not state.version:
            return None
        reason = guard_verdict(*self.measured(state), self.bounds)
        if reason is None:
            return None
        try:
            self.store.write_if_unchanged(roll_back(state, f"guardrail: {reason}", now_iso()), tag)
        except StaleWrite:
            log.warning("the rollout changed while the guard measured it; %s is judged again next round", reason)
            return None
        return reason

    def check_promotion(self) -> str | None:
        """Promote a stored rollout's challenger the significance test says is better; returns the reason."""
        state, tag = self.store.read()
        if state is None or not state.serving:
            return None
        report = compare(
            served_rows_since(self.settings, state.version, state.since), read_log(self.settings, FEEDBACK_PREFIX)
        )
        reason = promotion_verdict(report, min_labels=self.settings.rollout_promote_min_labels)
        if reason is None:
            return None
        try:
            self.store.write_if_unchanged(
                record_promotion(state, state.version, f"significance: {reason}", now_iso()), tag
            )
        except StaleWrite:
            log.warning("the rollout changed while the guard tested it; no promotion this round")
            return None
        self.models.registry.promote(state.version)
        return reason


def _figures(measured: dict[str, Any] | None) -> dict[str, Any] | None:
    keys = ("rows", "alert_rate", "review_rate", "error_rate", "latency_p99_ms")
    return {key: measured[key] for key in keys} if measured else None


def guard_actor(settings: Settings) -> Any:
    """The cluster's one guard for this registry (created on first use by the app or the stream scorer)."""
    return (
        ray.remote(RolloutGuard)
        .options(
            name=f"rollout-guard-{settings.model_bucket}",
            namespace=ACTOR_NAMESPACE,
            get_if_exists=True,
            lifetime="detached",
            num_cpus=0,
            max_restarts=-1,
            max_concurrency=4,
        )
        .remote(settings)
    )


def run_compare(settings: Settings) -> dict[str, Any]:
    """``fraudctl compare``: the champion against the rollout's challenger (or the settings' one), on the labelled
    transactions both decided since that rollout started."""
    state = RolloutStore(settings).current()
    version = registry_for(settings).resolve(state.version) if state.version else None
    if version is None:
        return {"labelled": 0, "note": "no challenger: start one with fraudctl rollout"}
    return compare(served_rows_since(settings, version, state.since), read_log(settings, FEEDBACK_PREFIX))


def rollout_status(settings: Settings) -> dict[str, Any]:
    """``fraudctl rollout --status``: from a running app, the guard's live view (``GET /api/rollout``); without
    one, the stored state (or the settings' default) and the champion, with ``live`` null."""
    try:
        answer = httpx.get(f"http://{settings.api_host}:{settings.api_port}/api/rollout", timeout=30)
        if answer.is_success:
            return answer.json()
    except httpx.TransportError:
        pass
    store = RolloutStore(settings)
    stored = store.stored()
    return {
        **(stored or store.default()).to_dict(),
        "stored": stored is not None,
        "champion": ModelSet(settings).resolve("champion"),
        "window_s": settings.rollout_window_s,
        "live": None,
        "verdict": None,
        "note": "no app answering: the stored state only",
    }


def run_promote(settings: Settings, version: str, reason: str = "by hand (fraudctl promote)") -> dict[str, Any]:
    """Move the champion pointer and record the promotion in the rollout state, then ask a running app (if any)
    to switch now rather than at its next refresh."""
    registry_for(settings).promote(version)
    state = RolloutStore(settings).promoted(version, reason)
    headers = {API_KEY_HEADER: settings.api_key} if settings.api_key else {}
    try:
        answer = httpx.post(
            f"http://{settings.api_host}:{settings.api_port}/api/admin/reload", headers=headers, timeout=30
        )
        serving = answer.json() if answer.is_success else f"reload refused: HTTP {answer.status_code}"
    except httpx.ConnectError:
        serving = "no app running; it will load the new champion when it starts"
    return {"champion": version, "serving": serving, "rollout": state.to_dict()}


def run_rollout(settings: Settings, version: str, share: float) -> dict[str, Any]:
    """``fraudctl rollout VERSION --share F``: ``version`` may be a pointer (``latest``); stored as a version."""
    resolved = registry_for(settings).resolve(version)
    if resolved is None:
        raise ModelNotFound(f"no {version!r} pointer in the registry")
    return RolloutStore(settings).start(resolved, share, "by hand (fraudctl rollout)").to_dict()
