"""Fraud scenarios, each with the timing and footprint fraud teams see in practice.

Every scenario spends a budget of fraudulent rows, incident by incident (an incident is a few to a few dozen
rows, so the per-incident loop is cheap next to the vectorised genuine traffic). Victims are drawn without
replacement across scenarios while the partition has users left, so one card carries one story.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cluster.features import haversine_km
from cluster.schema import GENUINE_SCENARIO, LABEL_COLUMN, SCENARIO_COLUMN

NS_PER_MINUTE = 60 * 1_000_000_000
NS_PER_HOUR = 60 * NS_PER_MINUTE
NS_PER_DAY = 24 * NS_PER_HOUR
IMPOSSIBLE_SPEED_KMH = 1100.0  # faster than any airliner door to door
# Where taken-over sessions and card-testing bots connect from (never a victim's own country or trip country).
FRAUD_ORIGIN_COUNTRIES = ("NG", "RU", "UA", "RO", "BR", "VN", "ID", "PH", "CN", "TR", "PK", "GH")
HIGH_TICKET_CATEGORIES = (
    "electronics",
    "gift_card_novelty",
    "airline",
    "travel_agency",
    "catalog_ecommerce",
    "department_store",
    "software",
    "hotel",
    "clothing",
    "jewelry",
    "atm_cash",
)
TESTING_CATEGORIES = ("digital_media", "digital_goods", "streaming_cable", "direct_marketing", "software")
# Rows per incident (fewest, most) for each scenario; a compromised terminal's count is its cloned cards on top of
# the genuine charges it relabels.
INCIDENT_ROWS: dict[str, tuple[int, int]] = {
    "card_testing": (4, 12),
    "cash_out": (4, 11),
    "cnp_leak": (3, 9),
    "account_takeover": (2, 6),
    "impossible_travel": (1, 3),
    "compromised_merchant": (3, 9),
}
INTERNAL_COLUMNS = (
    "user_id",
    "merchant_id",
    "amount",
    "ts",
    "channel",
    "device_id",
    "mcc",
    "country",
    "lat",
    "lon",
    LABEL_COLUMN,
    SCENARIO_COLUMN,
    "owner",
    "merchant_pos",
)


def transaction_frame(
    *,
    users: pd.DataFrame,
    merchants: pd.DataFrame,
    owner: np.ndarray,
    merchant: np.ndarray,
    ts: np.ndarray,
    amount: np.ndarray,
    channel: np.ndarray,
    device: np.ndarray,
    country: np.ndarray,
    scenario: str,
) -> pd.DataFrame:
    """Rows in the simulator's internal layout; merchant fields (mcc, and lat/lon when card-present) filled in."""
    owner, merchant = np.asarray(owner, dtype=np.int64), np.asarray(merchant, dtype=np.int64)
    channel = np.asarray(channel, dtype=object)
    present = channel == "card_present"
    return pd.DataFrame(
        {
            "user_id": users["user_id"].to_numpy(dtype=object)[owner],
            "merchant_id": merchants["merchant_id"].to_numpy(dtype=object)[merchant],
            "amount": np.asarray(amount, dtype=float),
            "ts": np.asarray(ts, dtype=np.int64),
            "channel": channel,
            "device_id": np.asarray(device, dtype=object),
            "mcc": merchants["mcc"].to_numpy(dtype=object)[merchant],
            "country": np.asarray(country, dtype=object),
            "lat": np.where(present, merchants["lat"].to_numpy(dtype=float)[merchant], np.nan),
            "lon": np.where(present, merchants["lon"].to_numpy(dtype=float)[merchant], np.nan),
            LABEL_COLUMN: np.full(len(owner), 0 if scenario == GENUINE_SCENARIO else 1, dtype=np.int8),
            SCENARIO_COLUMN: scenario,
            "owner": owner,
            "merchant_pos": merchant,
        },
        columns=list(INTERNAL_COLUMNS),
    )


@dataclass
class ScenarioContext:
    """What a scenario may look at: the partition's users, all merchants, the genuine traffic, the window."""

    rng: np.random.Generator
    users: pd.DataFrame
    merchants: pd.DataFrame
    genuine: pd.DataFrame
    start_ns: int
    end_ns: int
    device_prefix: str
    _victims: np.ndarray = field(init=False, repr=False)
    _drawn: int = field(default=0, init=False, repr=False)
    _devices: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self._victims = self.rng.permutation(len(self.users))

    def next_victim(self) -> int:
        """Position of the next victim in ``users``; distinct until the partition runs out, then reused."""
        victim = int(self._victims[self._drawn % len(self._victims)])
        self._drawn += 1
        return victim

    def new_device(self, kind: str) -> str:
        """A device id no genuine user has (fraudsters' phones, emulators and bots)."""
        self._devices += 1
        return f"{self.device_prefix}-{kind}{self._devices}"

    def moment(self, latest_offset_ns: int = 0) -> int:
        """A uniformly random time in the window that leaves ``latest_offset_ns`` before its end."""
        return int(self.rng.integers(self.start_ns, max(self.start_ns + 1, self.end_ns - latest_offset_ns)))

    def merchants_in(self, categories: tuple[str, ...], *, online: bool) -> np.ndarray:
        """Merchant positions of these categories (any category of that kind if none exists)."""
        kind = self.merchants["online_only"].to_numpy() == online
        chosen = np.flatnonzero(kind & self.merchants["category"].isin(categories).to_numpy())
        return chosen if len(chosen) else np.flatnonzero(kind)


class _Rows:
    """Collects one scenario's rows incident by incident."""

    def __init__(self) -> None:
        self.columns: dict[str, list] = {
            k: [] for k in ("owner", "merchant", "ts", "amount", "channel", "device", "country")
        }

    def add(self, **values: object) -> None:
        size = max(np.size(v) for v in values.values())
        for key, value in values.items():
            self.columns[key].extend(np.broadcast_to(np.asarray(value, dtype=object), size).tolist())

    def __len__(self) -> int:
        return len(self.columns["ts"])

    def frame(self, context: ScenarioContext, scenario: str) -> pd.DataFrame:
        c = self.columns
        return transaction_frame(
            users=context.users,
            merchants=context.merchants,
            owner=np.array(c["owner"], int),
            merchant=np.array(c["merchant"], int),
            ts=np.array(c["ts"], np.int64),
            amount=np.round(np.array(c["amount"], float), 2),
            channel=np.array(c["channel"]),
            device=np.array(c["device"], dtype=object),
            country=np.array(c["country"]),
            scenario=scenario,
        )


def _incident_size(rng: np.random.Generator, low: int, high: int, remaining: int) -> int:
    """A size in [low, high], shrunk to spend the rest of the budget (never below ``low``)."""
    size = int(rng.integers(low, high + 1))
    if remaining - size < low:
        size = max(low, min(size, remaining))
    return size


def card_testing(context: ScenarioContext, budget: int) -> pd.DataFrame:
    """A bot checks a stolen card with tiny charges at several merchants within minutes, then cashes in once."""
    rng, rows = context.rng, _Rows()
    small_shops = context.merchants_in(TESTING_CATEGORIES, online=True)
    big_shops = context.merchants_in(HIGH_TICKET_CATEGORIES, online=True)
    home = context.users["home_country"].to_numpy(dtype=object)
    while len(rows) < budget:
        probes = _incident_size(rng, *INCIDENT_ROWS["card_testing"], budget - len(rows)) - 1
        victim, bot = context.next_victim(), context.new_device("bot")
        country = rng.choice(FRAUD_ORIGIN_COUNTRIES) if rng.random() < 0.5 else home[victim]
        times = context.moment(2 * NS_PER_HOUR) + np.cumsum(rng.integers(4, 40, probes)) * 1_000_000_000
        cash_in = times[-1] + int(rng.integers(3 * NS_PER_MINUTE, 45 * NS_PER_MINUTE))
        shops = rng.choice(small_shops, size=probes, replace=len(small_shops) < probes)
        rows.add(
            owner=victim,
            merchant=shops,
            ts=times,
            amount=rng.choice([0.5, 1.0, 1.0, 1.99, 2.0, 2.5], probes),
            channel="online",
            device=bot,
            country=country,
        )
        rows.add(
            owner=victim,
            merchant=rng.choice(big_shops),
            ts=cash_in,
            amount=rng.uniform(250, 2500),
            channel="online",
            device=bot,
            country=country,
        )
    return rows.frame(context, "card_testing")


def cnp_leak(context: ScenarioContext, budget: int) -> pd.DataFrame:
    """Leaked card-not-present credentials: for days, some of the card's online purchases are a ring's, inflated."""
    rng, rows = context.rng, _Rows()
    shops = context.merchants_in(HIGH_TICKET_CATEGORIES, online=True)
    ring = [context.new_device("ring") for _ in range(max(2, budget // 25))]
    typical = context.users["typical_amount"].to_numpy()
    home = context.users["home_country"].to_numpy(dtype=object)
    while len(rows) < budget:
        size = _incident_size(rng, *INCIDENT_ROWS["cnp_leak"], budget - len(rows))
        victim = context.next_victim()
        span = int(rng.uniform(2, 7) * NS_PER_DAY)
        first = context.moment(span // 2)
        times = np.sort(rng.integers(first, min(first + span, context.end_ns), size))
        inflation = np.maximum(rng.lognormal(np.log(7.0), 0.3, size), 4.0)
        rows.add(
            owner=victim,
            merchant=rng.choice(shops, size),
            ts=times,
            amount=np.maximum(typical[victim] * inflation, 60.0),
            channel="online",
            device=rng.choice(ring),
            country=home[victim],
        )
    return rows.frame(context, "cnp_leak")


def account_takeover(context: ScenarioContext, budget: int) -> pd.DataFrame:
    """Stolen login: a device and a country the customer never used, then high-value remote purchases within hours."""
    rng, rows = context.rng, _Rows()
    shops = context.merchants_in(HIGH_TICKET_CATEGORIES, online=True)
    typical = context.users["typical_amount"].to_numpy()
    seen = context.genuine.groupby("owner")["country"].agg(set).to_dict()
    home = context.users["home_country"].to_numpy(dtype=object)
    while len(rows) < budget:
        size = _incident_size(rng, *INCIDENT_ROWS["account_takeover"], budget - len(rows))
        victim = context.next_victim()
        fresh = [c for c in FRAUD_ORIGIN_COUNTRIES if c not in seen.get(victim, set()) and c != home[victim]]
        fresh = fresh or [c for c in FRAUD_ORIGIN_COUNTRIES if c != home[victim]]
        times = context.moment(8 * NS_PER_HOUR) + np.sort(rng.integers(NS_PER_MINUTE, 6 * NS_PER_HOUR, size))
        amounts = np.maximum(typical[victim] * rng.uniform(6, 15, size), rng.uniform(300, 1800, size))
        rows.add(
            owner=victim,
            merchant=rng.choice(shops, size),
            ts=times,
            amount=amounts,
            channel=rng.choice(["mobile", "online"]),
            device=context.new_device("ato"),
            country=rng.choice(fresh),
        )
    return rows.frame(context, "account_takeover")


def impossible_travel(context: ScenarioContext, budget: int) -> pd.DataFrame:
    """A counterfeit card swiped far away soon after the real card was used: the implied speed is impossible."""
    rng, rows = context.rng, _Rows()
    present = context.genuine[context.genuine["channel"] == "card_present"].sort_values(["owner", "ts"])
    owners, times = present["owner"].to_numpy(), present["ts"].to_numpy()
    following = np.append(times[1:], np.iinfo(np.int64).max)
    following[np.append(owners[1:] != owners[:-1], True)] = context.end_ns
    lat, lon = present["lat"].to_numpy(), present["lon"].to_numpy()
    physical = np.flatnonzero(~context.merchants["online_only"].to_numpy())
    shop_lat, shop_lon = context.merchants["lat"].to_numpy()[physical], context.merchants["lon"].to_numpy()[physical]
    city = context.merchants["city_index"].to_numpy()
    ticket = context.merchants["typical_ticket"].to_numpy()
    country = context.merchants["country"].to_numpy(dtype=object)
    misses = 0
    while len(rows) < budget and misses < 50 * len(context.users):
        victim = context.next_victim()
        lo, hi = np.searchsorted(owners, [victim, victim + 1])
        usable = np.flatnonzero(following[lo:hi] - times[lo:hi] >= 45 * NS_PER_MINUTE) + lo
        if not len(usable):
            misses += 1
            continue
        anchor = int(rng.choice(usable))
        distance = haversine_km(lat[anchor], lon[anchor], shop_lat, shop_lon)
        far = physical[distance >= 2000]
        if not len(far):
            misses += 1
            continue
        target = int(rng.choice(far))
        reach_km = float(
            haversine_km(
                lat[anchor], lon[anchor], context.merchants["lat"].iat[target], context.merchants["lon"].iat[target]
            )
        )
        deadline = min(
            times[anchor] + int(reach_km / IMPOSSIBLE_SPEED_KMH * NS_PER_HOUR), following[anchor] - 5 * NS_PER_MINUTE
        )
        size = _incident_size(rng, *INCIDENT_ROWS["impossible_travel"], budget - len(rows))
        first = times[anchor] + int(rng.uniform(0.3, 0.5) * (deadline - times[anchor]))
        swipes = first + np.append(0, np.cumsum(rng.integers(4 * NS_PER_MINUTE, 15 * NS_PER_MINUTE, size - 1)))
        swipes = swipes[swipes < deadline]
        nearby = np.flatnonzero(city == city[target])
        shops = rng.choice(nearby, size=len(swipes), p=ticket[nearby] / ticket[nearby].sum())
        rows.add(
            owner=victim,
            merchant=shops,
            ts=swipes,
            amount=ticket[shops] * rng.uniform(1.5, 4.0, len(swipes)),
            channel="card_present",
            device=None,
            country=country[shops],
        )
    return rows.frame(context, "impossible_travel")


def cash_out(context: ScenarioContext, budget: int) -> pd.DataFrame:
    """A velocity burst: ATM withdrawals and resellable goods that drain the card to near its credit limit."""
    rng, rows = context.rng, _Rows()
    shops = context.merchants_in(("gift_card_novelty", "electronics", "catalog_ecommerce"), online=True)
    merchants = context.merchants
    atm = (merchants["category"] == "atm_cash").to_numpy()
    city = merchants["city_index"].to_numpy()
    country = merchants["country"].to_numpy(dtype=object)
    limit = context.users["credit_limit"].to_numpy()
    home_city = context.users["city_index"].to_numpy()
    home = context.users["home_country"].to_numpy(dtype=object)
    while len(rows) < budget:
        size = _incident_size(rng, *INCIDENT_ROWS["cash_out"], budget - len(rows))
        victim = context.next_victim()
        total = limit[victim] * rng.uniform(0.85, 0.97)
        amounts = np.floor(rng.dirichlet(np.full(size, 3.0)) * total * 100) / 100
        times = context.moment(4 * NS_PER_HOUR) + np.cumsum(rng.integers(2 * NS_PER_MINUTE, 12 * NS_PER_MINUTE, size))
        local_atms = np.flatnonzero(atm & (city == home_city[victim]))
        cash = (amounts <= 800) & (rng.random(size) < 0.5) & (len(local_atms) > 0)
        shop = np.where(cash, rng.choice(local_atms, size) if len(local_atms) else -1, rng.choice(shops, size))
        device = context.new_device("cash")
        rows.add(
            owner=victim,
            merchant=shop,
            ts=times,
            amount=amounts,
            channel=np.where(cash, "card_present", "online"),
            device=np.where(cash, None, device),
            country=np.where(cash, country[shop], home[victim]),
        )
    return rows.frame(context, "cash_out")


def compromised_merchant(context: ScenarioContext, budget: int) -> pd.DataFrame:
    """A compromised (skimming or colluding) terminal: every card-present charge on it is fraud for weeks.

    Skimmers typically run 2-4 weeks before the pattern is found (the handbook's terminals: 28 days), so an
    incident lasts 14-28 days, longer than the label delay: once its first labels arrive, its later charges
    are catchable. Any physical shop can be hit (skimmers favour small, unattended terminals, not busy ones).

    The genuine rows it charged in its window are relabelled in ``context.genuine``; the rows returned are the
    cloned cards the fraudsters ran through it on top.
    """
    rng, rows = context.rng, _Rows()
    genuine = context.genuine
    present = genuine[genuine["channel"] == "card_present"].sort_values(["merchant_pos", "ts"])
    shop_of, time_of, row_of = (present["merchant_pos"].to_numpy(), present["ts"].to_numpy(), present.index.to_numpy())
    physical = np.flatnonzero(~context.merchants["online_only"].to_numpy())
    ticket = context.merchants["typical_ticket"].to_numpy()
    country = context.merchants["country"].to_numpy(dtype=object)
    spent = 0
    for merchant in rng.permutation(physical):
        if spent >= budget:
            break
        span = min(int(rng.uniform(14, 28) * NS_PER_DAY), context.end_ns - context.start_ns - 1)
        first = context.moment(span)
        last = first + span
        lo, hi = np.searchsorted(shop_of, [merchant, merchant + 1])
        begin, stop = lo + np.searchsorted(time_of[lo:hi], [first, last + 1])
        stop = min(stop, begin + budget - spent)
        if stop - begin == budget - spent and stop > begin:
            last = int(time_of[stop - 1])
        charged = row_of[begin:stop]
        genuine.loc[charged, LABEL_COLUMN] = 1
        genuine.loc[charged, SCENARIO_COLUMN] = "compromised_merchant"
        spent += len(charged)
        fewest, most = INCIDENT_ROWS["compromised_merchant"]
        clones = min(budget - spent, int(rng.integers(fewest, most + 1)))
        if not clones:
            continue
        victims = [context.next_victim() for _ in range(clones)]
        rows.add(
            owner=victims,
            merchant=merchant,
            ts=rng.integers(first, last + 1, clones),
            amount=ticket[merchant] * rng.uniform(1.5, 5.0, clones),
            channel="card_present",
            device=None,
            country=country[merchant],
        )
        spent += clones
    return rows.frame(context, "compromised_merchant")


# Order matters for the budget: scenarios with large minimal incidents first, the most divisible last.
SCENARIO_BUILDERS: dict[str, Callable[[ScenarioContext, int], pd.DataFrame]] = {
    "card_testing": card_testing,
    "cash_out": cash_out,
    "cnp_leak": cnp_leak,
    "account_takeover": account_takeover,
    "impossible_travel": impossible_travel,
    "compromised_merchant": compromised_merchant,
}
FRAUD_SCENARIOS: tuple[str, ...] = tuple(SCENARIO_BUILDERS)


def split_budget(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Fraud rows per scenario by largest remainder; every scenario with a positive weight gets at least one."""
    if total <= 0:
        return {}
    active = {name: w for name, w in weights.items() if w > 0}
    share = np.array(list(active.values())) / sum(active.values()) * total
    counts = np.floor(share).astype(int)
    counts[np.argsort(counts - share)[: total - counts.sum()]] += 1
    return {name: max(1, int(c)) for name, c in zip(active, counts)}


def attack_budget(scenario: str, incidents: int) -> int:
    """Fraud rows for about ``incidents`` incidents of ``scenario`` (its typical incident size each)."""
    if scenario not in SCENARIO_BUILDERS:
        raise ValueError(f"scenario: unknown {scenario!r}; known: {FRAUD_SCENARIOS}")
    if incidents < 1:
        raise ValueError(f"incidents: must be >= 1, got {incidents}")
    fewest, most = INCIDENT_ROWS[scenario]
    return incidents * round((fewest + most) / 2)


def inject_fraud(context: ScenarioContext, budgets: dict[str, int]) -> pd.DataFrame:
    """Genuine traffic (some of it relabelled by compromised terminals) plus every scenario's injected rows.

    A scenario that overspends its budget (incidents have a minimal size) leaves less to the ones after it, so
    the overall fraud rate stays on target even for small populations.
    """
    injected, planned, spent = [], 0, 0
    for name, builder in SCENARIO_BUILDERS.items():
        if name not in budgets:
            continue
        planned += budgets[name]
        injected.append(builder(context, max(1, planned - spent)))
        spent = sum(map(len, injected)) + int(context.genuine[LABEL_COLUMN].sum())
    return pd.concat([context.genuine, *injected], ignore_index=True)
