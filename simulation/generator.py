"""Simulated card population and genuine traffic, with fraud injected by ``simulation.scenarios``.

Everything is vectorised with numpy. The population (users, merchants, devices) depends only on the seed and the
population sizes, so every partition and every time window sees the same people; traffic depends on the seed,
the window (``start``, ``days``), the partition and the id prefix, so successive windows differ.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import numpy as np
import pandas as pd

from cluster.config import Settings
from cluster.profiles import MERCHANT_PROFILE_COLUMNS, USER_PROFILE_COLUMNS, conform
from cluster.schema import (
    CANONICAL_COLUMNS,
    DEFAULT_CURRENCY,
    GENUINE_SCENARIO,
    ID_PATTERN,
    LABEL_COLUMN,
    SCENARIO_COLUMN,
    validate_frame,
)
from simulation import scenarios

NS_PER_SECOND = 1_000_000_000
NS_PER_HOUR = 3600 * NS_PER_SECOND
NS_PER_DAY = 24 * NS_PER_HOUR
HOME_COUNTRY = "US"
# Account ages are measured back from this date (or from ``start`` if earlier), never from a moving window start.
POPULATION_EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)

# city, ISO country, lat, lon, UTC offset (standard time, hours), share of that country's population here.
CITIES = pd.DataFrame(
    [
        ("New York", "US", 40.7128, -74.0060, -5, 8.3),
        ("Los Angeles", "US", 34.0522, -118.2437, -8, 3.9),
        ("Chicago", "US", 41.8781, -87.6298, -6, 2.7),
        ("Houston", "US", 29.7604, -95.3698, -6, 2.3),
        ("Phoenix", "US", 33.4484, -112.0740, -7, 1.6),
        ("Philadelphia", "US", 39.9526, -75.1652, -5, 1.6),
        ("San Antonio", "US", 29.4241, -98.4936, -6, 1.4),
        ("San Diego", "US", 32.7157, -117.1611, -8, 1.4),
        ("Dallas", "US", 32.7767, -96.7970, -6, 1.3),
        ("Miami", "US", 25.7617, -80.1918, -5, 1.0),
        ("Atlanta", "US", 33.7490, -84.3880, -5, 1.0),
        ("Seattle", "US", 47.6062, -122.3321, -8, 1.0),
        ("Denver", "US", 39.7392, -104.9903, -7, 1.0),
        ("Boston", "US", 42.3601, -71.0589, -5, 1.0),
        ("San Francisco", "US", 37.7749, -122.4194, -8, 1.0),
        ("Minneapolis", "US", 44.9778, -93.2650, -6, 0.6),
        ("London", "GB", 51.5074, -0.1278, 0, 9.0),
        ("Manchester", "GB", 53.4808, -2.2426, 0, 2.7),
        ("Toronto", "CA", 43.6532, -79.3832, -5, 2.8),
        ("Vancouver", "CA", 49.2827, -123.1207, -8, 1.0),
        ("Mexico City", "MX", 19.4326, -99.1332, -6, 9.2),
        ("Paris", "FR", 48.8566, 2.3522, 1, 2.1),
        ("Berlin", "DE", 52.5200, 13.4050, 1, 3.6),
        ("Madrid", "ES", 40.4168, -3.7038, 1, 3.3),
        ("Rome", "IT", 41.9028, 12.4964, 1, 2.8),
        ("Amsterdam", "NL", 52.3676, 4.9041, 1, 0.9),
        ("Sao Paulo", "BR", -23.5505, -46.6333, -3, 12.3),
        ("Tokyo", "JP", 35.6762, 139.6503, 9, 14.0),
        ("Mumbai", "IN", 19.0760, 72.8777, 5.5, 12.4),
        ("Sydney", "AU", -33.8688, 151.2093, 10, 5.3),
        ("Lagos", "NG", 6.5244, 3.3792, 1, 8.0),
        ("Dubai", "AE", 25.2048, 55.2708, 4, 3.3),
        ("Singapore", "SG", 1.3521, 103.8198, 8, 5.6),
        ("Bangkok", "TH", 13.7563, 100.5018, 7, 8.3),
    ],
    columns=["city", "country", "lat", "lon", "utc_offset", "weight"],
)
ABROAD_SHARE = 0.12  # users whose home is outside HOME_COUNTRY (expats' cards, cross-border customers)
HOUSEHOLD_SHARE = 0.05  # a user shares a family laptop or tablet with the next user (about 10 % of users share)

# Real ISO 18245 merchant category codes: median ticket (USD), where they trade, popularity weight.
MCCS = pd.DataFrame(
    [
        ("5411", "grocery_store", 45.0, "physical", 14.0),
        ("5812", "restaurant", 38.0, "physical", 10.0),
        ("5814", "fast_food", 12.0, "physical", 10.0),
        ("5541", "service_station", 42.0, "physical", 7.0),
        ("5912", "drug_store", 24.0, "physical", 5.0),
        ("5310", "discount_store", 33.0, "physical", 5.0),
        ("5311", "department_store", 72.0, "both", 4.0),
        ("5651", "clothing", 58.0, "both", 4.0),
        ("5732", "electronics", 190.0, "both", 2.5),
        ("5999", "misc_retail", 30.0, "both", 4.0),
        ("5200", "home_supply", 88.0, "physical", 2.5),
        ("5942", "book_store", 21.0, "both", 1.5),
        ("5944", "jewelry", 260.0, "physical", 0.8),
        ("5947", "gift_card_novelty", 35.0, "both", 1.5),
        ("4111", "commuter_transport", 3.5, "physical", 4.0),
        ("4121", "taxi_rideshare", 22.0, "both", 3.0),
        ("6011", "atm_cash", 120.0, "physical", 3.0),
        ("7011", "hotel", 165.0, "both", 1.0),
        ("4511", "airline", 420.0, "online", 1.0),
        ("4722", "travel_agency", 350.0, "online", 0.8),
        ("5815", "digital_media", 11.0, "online", 4.0),
        ("5818", "digital_goods", 16.0, "online", 3.0),
        ("4899", "streaming_cable", 19.0, "online", 3.0),
        ("5734", "software", 45.0, "online", 1.5),
        ("5964", "catalog_ecommerce", 62.0, "online", 5.0),
        ("5969", "direct_marketing", 40.0, "online", 1.5),
    ],
    columns=["mcc", "category", "median_ticket", "trades", "weight"],
)
ONLINE_MERCHANT_SHARE = 0.25
ONLINE_MERCHANT_COUNTRIES = (("US", 0.7), ("GB", 0.1), ("IE", 0.08), ("NL", 0.06), ("CA", 0.06))

# segment: population share, typical amount, transactions/day, share online+mobile, credit limit, active peak hour
SEGMENTS = pd.DataFrame(
    [
        ("student", 0.18, 22.0, 1.7, 0.45, 1500.0, 20),
        ("mass_market", 0.50, 42.0, 2.2, 0.30, 5000.0, 14),
        ("affluent", 0.15, 95.0, 2.8, 0.35, 20000.0, 18),
        ("senior", 0.10, 38.0, 1.2, 0.12, 6000.0, 11),
        ("small_business", 0.07, 150.0, 3.0, 0.40, 15000.0, 10),
    ],
    columns=["segment", "share", "typical_amount", "tx_per_day", "online_share", "credit_limit", "peak_hour"],
)
MOBILE_SHARE_OF_REMOTE = 0.55
CARD_NETWORKS = (("visa", 0.55), ("mastercard", 0.35), ("amex", 0.10))

# Seasonality: a local-time hour-of-day curve (lunch and evening peaks), day-of-week factors (Mon..Sun), paydays.
HOURLY_CURVE = np.array(
    [
        0.25,
        0.12,
        0.08,
        0.06,
        0.06,
        0.15,
        0.4,
        0.8,
        1.1,
        1.2,
        1.3,
        1.5,
        1.9,
        1.7,
        1.3,
        1.2,
        1.3,
        1.6,
        1.9,
        1.8,
        1.5,
        1.1,
        0.7,
        0.4,
    ]
)
WEEKDAY_FACTORS = np.array([0.92, 0.95, 0.97, 1.0, 1.12, 1.18, 0.86])
PAYDAY_FACTOR = 1.15  # the 1st and the 15th, and the day after
SHARE_AT_ACTIVE_HOURS = 0.75  # the rest follows the population's hourly curve
FAVOURITE_SLOTS = 6  # regular merchants per user and city (by a stable hash: no stored lists)
SHARE_AT_FAVOURITES = 0.7
TRIP_PROBABILITY_PER_DAY = 0.004
AMOUNT_SPREAD = 0.45  # lognormal sigma of a genuine amount around its expected value
TICKET_REFERENCE = 36.0  # a user whose typical_amount is this pays each merchant's typical ticket
SAME_STOP_NS = 15 * 60 * NS_PER_SECOND  # card-present uses closer than this are at the same shop
ATTACK_WINDOW = timedelta(hours=3)  # a launched attack's incidents all begin within this


def _default(name: str) -> Any:
    """The simulated world's defaults are the settings' (``cluster.config``): one home for each."""
    return Settings.model_fields[name].default


@dataclass(frozen=True)
class SimulationConfig:
    n_users: int = _default("simulated_users")
    days: int = _default("simulated_days")
    start: datetime | date = _default("simulated_start")
    seed: int = _default("seed")
    fraud_rate: float = _default("fraud_rate")
    n_merchants: int | None = None
    scenario_weights: dict[str, float] | None = field(default=None, hash=False)
    partition: tuple[int, int] = (0, 1)
    id_prefix: str = "tx"

    def __post_init__(self) -> None:
        start = self.start
        if isinstance(start, date) and not isinstance(start, datetime):
            start = datetime.combine(start, time(), tzinfo=timezone.utc)
        if not isinstance(start, datetime):
            raise ValueError(f"start: expected a date or datetime, got {start!r}")
        object.__setattr__(
            self,
            "start",
            start.replace(tzinfo=timezone.utc) if start.tzinfo is None else start.astimezone(timezone.utc),
        )
        if self.seed < 0:
            raise ValueError(f"seed: must be >= 0, got {self.seed}")
        if self.n_users < 1:
            raise ValueError(f"n_users: must be >= 1, got {self.n_users}")
        if self.days < 1:
            raise ValueError(f"days: must be >= 1, got {self.days}")
        if not 0 < self.fraud_rate < 0.5:
            raise ValueError(f"fraud_rate: must be in (0, 0.5), got {self.fraud_rate}")
        if self.n_merchants is not None and self.n_merchants < len(CITIES) + 10:
            raise ValueError(
                f"n_merchants: must be >= {len(CITIES) + 10} (a shop in every city), got {self.n_merchants}"
            )
        index, count = self.partition
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"partition: need 0 <= index < count, got {self.partition}")
        if not re.fullmatch(ID_PATTERN, self.id_prefix) or len(self.id_prefix) > 40:
            raise ValueError(f"id_prefix: must be 1-40 characters of A-Za-z0-9_-.:, got {self.id_prefix!r}")
        weights = self.scenario_weights or {}
        unknown = sorted(set(weights) - set(scenarios.FRAUD_SCENARIOS))
        if unknown:
            raise ValueError(f"scenario_weights: unknown scenario(s) {unknown}; known: {scenarios.FRAUD_SCENARIOS}")
        if weights and (min(weights.values()) < 0 or sum(weights.values()) <= 0):
            raise ValueError("scenario_weights: weights must be >= 0 with a positive sum")

    @property
    def merchant_count(self) -> int:
        return self.n_merchants if self.n_merchants is not None else max(200, self.n_users // 4)

    @property
    def end(self) -> datetime:
        return self.start + timedelta(days=self.days)


@dataclass
class SimulatedHistory:
    transactions: pd.DataFrame
    users: pd.DataFrame
    merchants: pd.DataFrame


Progress = Callable[[str], None]


def simulate_history(config: SimulationConfig, *, progress: Progress | None = None) -> SimulatedHistory:
    """Labelled transactions of the partition's users over the window; ``users`` is the whole population.

    ``progress`` (if given) is called with the name of each stage as it completes.
    """
    done = progress or (lambda stage: None)
    users, merchants, context = _partition_context(config, done)
    weights = config.scenario_weights or {name: 1.0 for name in scenarios.FRAUD_SCENARIOS}
    target = round(config.fraud_rate * len(context.genuine) / (1 - config.fraud_rate))
    labelled = scenarios.inject_fraud(context, scenarios.split_budget(target, weights))
    done("fraud scenarios")
    transactions = _finalise(labelled, config)
    done("validation")
    return SimulatedHistory(transactions=transactions, users=users, merchants=merchants)


def simulate_attack(config: SimulationConfig, scenario: str, incidents: int) -> pd.DataFrame:
    """About ``incidents`` incidents of one scenario on the partition's users, all starting within
    ``ATTACK_WINDOW`` of ``config.start``: labelled canonical rows in time order.

    The victims' own genuine use in that window comes with them (an impossible trip is measured from the real
    card's last swipe, so that swipe must be in the traffic too); no other genuine row is included.
    """
    budget = scenarios.attack_budget(scenario, incidents)
    _, _, context = _partition_context(config, lambda stage: None, until=config.start + ATTACK_WINDOW)
    fraud = scenarios.SCENARIO_BUILDERS[scenario](context, budget)
    genuine = context.genuine
    relabelled = genuine[genuine[SCENARIO_COLUMN] == scenario]
    victims = genuine[(genuine[LABEL_COLUMN] == 0) & genuine["owner"].isin(fraud["owner"])]
    return _finalise(pd.concat([fraud, relabelled, victims], ignore_index=True), config)


def _partition_context(
    config: SimulationConfig, done: Progress, until: datetime | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, scenarios.ScenarioContext]:
    """The population, and the partition's genuine traffic as the context fraud scenarios are built in
    (cut at ``until`` when given, which then ends the scenarios' window too)."""
    users, merchants = build_population(config)
    done("population")
    rng = np.random.default_rng(_traffic_entropy(config))
    index, count = config.partition
    mine = users[users["user_index"] % count == index].reset_index(drop=True)
    start_ns, end_ns = _ns(config.start), _ns(config.end)
    genuine = genuine_traffic(mine, merchants, rng, start_ns=start_ns, days=config.days, seed=config.seed)
    if until is not None:
        end_ns = min(end_ns, _ns(until))
        genuine = genuine[genuine["ts"] < end_ns].reset_index(drop=True)
    done("genuine traffic")
    context = scenarios.ScenarioContext(
        rng=rng,
        users=mine,
        merchants=merchants,
        genuine=genuine,
        start_ns=start_ns,
        end_ns=end_ns,
        device_prefix=f"fx-{config.id_prefix}-{index}",
    )
    return users, merchants, context


def build_population(config: SimulationConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Users and merchants; deterministic from the seed and the population sizes (not partition or window)."""
    user_seed, merchant_seed = np.random.SeedSequence([config.seed, 0x5EED]).spawn(2)
    as_of = min(config.start, POPULATION_EPOCH)
    merchants = _build_merchants(np.random.default_rng(merchant_seed), config.merchant_count)
    users = _build_users(np.random.default_rng(user_seed), config.n_users, as_of)
    return users, merchants


def _build_merchants(rng: np.random.Generator, n: int) -> pd.DataFrame:
    n_online = max(10, round(n * ONLINE_MERCHANT_SHARE))
    online = np.zeros(n, dtype=bool)
    online[rng.permutation(n)[:n_online]] = True
    physical_positions = np.flatnonzero(~online)

    mcc_row = np.empty(n, dtype=int)
    for is_online, trades in ((True, ("online", "both")), (False, ("physical", "both"))):
        eligible = MCCS.index[MCCS["trades"].isin(trades)].to_numpy()
        weights = MCCS.loc[eligible, "weight"].to_numpy()
        mcc_row[online == is_online] = rng.choice(
            eligible, size=int((online == is_online).sum()), p=weights / weights.sum()
        )

    # Every city gets shops first, then the rest follow where people live (home country weighted up).
    city = np.full(n, -1)
    city_weights = CITIES["weight"].to_numpy() * np.where(CITIES["country"] == HOME_COUNTRY, 4.0, 1.0)
    city[physical_positions[: len(CITIES)]] = np.arange(len(CITIES))
    rest = physical_positions[len(CITIES) :]
    city[rest] = rng.choice(len(CITIES), size=len(rest), p=city_weights / city_weights.sum())

    cities = CITIES.iloc[np.maximum(city, 0)]
    countries, shares = zip(*ONLINE_MERCHANT_COUNTRIES)
    country = np.where(online, rng.choice(countries, size=n, p=shares), cities["country"].to_numpy())
    lat = np.where(online, np.nan, cities["lat"].to_numpy() + rng.normal(0, 0.05, n))
    lon = np.where(online, np.nan, cities["lon"].to_numpy() + rng.normal(0, 0.05, n))
    mccs = MCCS.iloc[mcc_row]
    frame = pd.DataFrame(
        {
            "merchant_id": [f"m{i:06d}" for i in range(n)],
            "mcc": mccs["mcc"].to_numpy(),
            "lat": lat.round(5),
            "lon": lon.round(5),
            "country": country,
            "typical_ticket": (mccs["median_ticket"].to_numpy() * rng.lognormal(0, 0.3, n)).round(2),
        }
    )
    profile = conform(frame, MERCHANT_PROFILE_COLUMNS)
    profile["category"] = mccs["category"].to_numpy()
    profile["city"] = np.where(online, None, cities["city"].to_numpy())
    profile["city_index"] = city
    profile["online_only"] = online
    profile["popularity"] = rng.lognormal(0, 1.0, n).round(4)  # a few big names, a long tail
    return profile


def _build_users(rng: np.random.Generator, n: int, as_of: datetime) -> pd.DataFrame:
    index = np.arange(n)
    segments = SEGMENTS.iloc[rng.choice(len(SEGMENTS), size=n, p=SEGMENTS["share"].to_numpy())]
    domestic = CITIES.index[CITIES["country"] == HOME_COUNTRY].to_numpy()
    foreign = CITIES.index[CITIES["country"] != HOME_COUNTRY].to_numpy()
    weights = CITIES["weight"].to_numpy()
    city = np.where(
        rng.random(n) < ABROAD_SHARE,
        rng.choice(foreign, size=n, p=weights[foreign] / weights[foreign].sum()),
        rng.choice(domestic, size=n, p=weights[domestic] / weights[domestic].sum()),
    )
    cities = CITIES.iloc[city]

    new_account = rng.random(n) < 0.05
    age_days = np.where(new_account, rng.uniform(7, 90, n), np.minimum(30 + rng.exponential(1500, n), 9000))
    kyc_level = np.where(
        new_account, rng.choice([1, 2], size=n, p=[0.6, 0.4]), rng.choice([1, 2, 3], size=n, p=[0.12, 0.45, 0.43])
    )
    kyc_factor = np.array([0.0, 0.5, 0.8, 1.0])[kyc_level]
    credit_limit = np.maximum(
        300, np.round(segments["credit_limit"].to_numpy() * kyc_factor * rng.lognormal(0, 0.35, n), -2)
    )
    user_id = np.array([f"u{i:07d}" for i in index], dtype=object)
    second_device = rng.random(n) < 0.6
    networks, network_shares = zip(*CARD_NETWORKS)
    frame = pd.DataFrame(
        {
            "user_id": user_id,
            "home_lat": (cities["lat"].to_numpy() + rng.normal(0, 0.08, n)).round(5),
            "home_lon": (cities["lon"].to_numpy() + rng.normal(0, 0.08, n)).round(5),
            "home_country": cities["country"].to_numpy(),
            "account_opened": (pd.Timestamp(as_of) - pd.to_timedelta(np.round(age_days * 86400), unit="s")).astype(
                USER_PROFILE_COLUMNS["account_opened"]
            ),
            "credit_limit": credit_limit,
            "kyc_level": kyc_level,
            "segment": segments["segment"].to_numpy(),
        }
    )
    profile = conform(frame, USER_PROFILE_COLUMNS)
    profile["home_city"] = cities["city"].to_numpy()
    profile["city_index"] = city
    profile["utc_offset"] = cities["utc_offset"].to_numpy(dtype=float)
    profile["typical_amount"] = (segments["typical_amount"].to_numpy() * rng.lognormal(0, 0.35, n)).round(2)
    profile["tx_per_day"] = (segments["tx_per_day"].to_numpy() * rng.lognormal(0, 0.45, n)).round(3)
    profile["online_share"] = np.clip(segments["online_share"].to_numpy() + rng.normal(0, 0.1, n), 0.03, 0.9).round(3)
    peak = rng.normal(segments["peak_hour"].to_numpy(), 2.5)
    profile["active_hour_peak"] = np.clip(np.round(peak), 6, 22).astype(int)
    profile["active_hour_spread"] = rng.uniform(2.0, 4.5, n).round(2)
    profile["card_network"] = rng.choice(networks, size=n, p=network_shares)
    profile["device_primary"] = [f"dv-{u}-1" for u in user_id]
    secondary = np.array([f"dv-{u}-2" if two else None for u, two in zip(user_id, second_device)], dtype=object)
    household = np.flatnonzero(rng.random(n) < HOUSEHOLD_SHARE)
    household = household[household + 1 < n]
    household = household[np.isin(household, household + 1, invert=True)]  # a device is shared by two at most
    secondary[household + 1] = secondary[household] = [f"dv-{u}-home" for u in user_id[household]]
    profile["device_secondary"] = pd.array(secondary, dtype="string")
    profile["user_index"] = index
    return profile


def genuine_traffic(
    users: pd.DataFrame, merchants: pd.DataFrame, rng: np.random.Generator, *, start_ns: int, days: int, seed: int
) -> pd.DataFrame:
    """Genuine transactions of ``users`` within [start, start + days), in the internal column layout.

    Times are drawn per local calendar day (weekday, payday factors) and local hour (the user's active hours or
    the population's curve), then shifted to UTC by the home city's offset. Some users take a trip: card-present
    spending moves to the destination for its nights; departure and return days carry no card-present use.
    """
    first_day_ns = (start_ns // NS_PER_DAY - 1) * NS_PER_DAY
    calendar_days = days + 3  # local days that can overlap the window for any UTC offset
    day_weights = _day_weights(first_day_ns, calendar_days)
    n_users = len(users)
    counts = rng.poisson(users["tx_per_day"].to_numpy() * day_weights.sum())
    owner = np.repeat(np.arange(n_users), counts)
    n = len(owner)

    day = rng.choice(calendar_days, size=n, p=day_weights / day_weights.sum())
    at_active_hours = rng.random(n) < SHARE_AT_ACTIVE_HOURS
    personal_hour = rng.normal(
        users["active_hour_peak"].to_numpy()[owner], users["active_hour_spread"].to_numpy()[owner]
    )
    curve_hour = rng.choice(24, size=n, p=HOURLY_CURVE / HOURLY_CURVE.sum()) + rng.random(n)
    hour = np.mod(np.where(at_active_hours, personal_hour, curve_hour), 24.0)
    offset_ns = (users["utc_offset"].to_numpy()[owner] * NS_PER_HOUR).astype(np.int64)
    ts = first_day_ns + day * NS_PER_DAY + (hour * NS_PER_HOUR).astype(np.int64) - offset_ns

    remote = rng.random(n) < users["online_share"].to_numpy()[owner]
    mobile = remote & (rng.random(n) < MOBILE_SHARE_OF_REMOTE)
    channel = np.where(remote, np.where(mobile, "mobile", "online"), "card_present").astype(object)

    location = users["city_index"].to_numpy()[owner].copy()
    depart, back, destination = _trips(users, rng, calendar_days)
    travelling = depart[owner] >= 0
    away = travelling & (day > depart[owner]) & (day < back[owner])
    location[away] = destination[owner][away]
    in_transit = travelling & ((day == depart[owner]) | (day == back[owner])) & (channel == "card_present")
    channel[in_transit] = "mobile"

    keep = (ts >= start_ns) & (ts < start_ns + days * NS_PER_DAY)
    owner, ts, channel, location = owner[keep], ts[keep], channel[keep], location[keep]
    n = len(owner)

    merchant = np.empty(n, dtype=np.int64)
    present = channel == "card_present"
    user_index = users["user_index"].to_numpy()[owner]
    for city_index in np.unique(location[present]):
        rows = np.flatnonzero(present & (location == city_index))
        local = np.flatnonzero((merchants["city_index"] == city_index).to_numpy())
        merchant[rows] = _pick_merchants(rng, local, merchants, user_index[rows], seed, salt=int(city_index) + 1)
    rows = np.flatnonzero(~present)
    online_merchants = np.flatnonzero(merchants["online_only"].to_numpy())
    merchant[rows] = _pick_merchants(rng, online_merchants, merchants, user_index[rows], seed, salt=0)

    _one_shop_per_stop(owner, ts, merchant, present)

    spend_factor = users["typical_amount"].to_numpy()[owner] / TICKET_REFERENCE
    amount = merchants["typical_ticket"].to_numpy()[merchant] * spend_factor * rng.lognormal(0, AMOUNT_SPREAD, n)
    amount = np.clip(np.round(amount, 2), 0.5, 50_000)

    devices = np.where(
        channel == "mobile",
        users["device_primary"].to_numpy(dtype=object)[owner],
        users["device_secondary"].fillna(users["device_primary"]).to_numpy(dtype=object)[owner],
    )
    device = np.where(present, None, devices)
    country = np.where(
        present,
        merchants["country"].to_numpy(dtype=object)[merchant],
        CITIES["country"].to_numpy(dtype=object)[location],
    )
    return scenarios.transaction_frame(
        users=users,
        merchants=merchants,
        owner=owner,
        merchant=merchant,
        ts=ts,
        amount=amount,
        channel=channel,
        device=device,
        country=country,
        scenario=GENUINE_SCENARIO,
    )


def _one_shop_per_stop(owner: np.ndarray, ts: np.ndarray, merchant: np.ndarray, present: np.ndarray) -> None:
    """Card-present uses minutes apart happen at one shop (nobody crosses town in seconds): fixed in place."""
    rows = np.flatnonzero(present)
    rows = rows[np.lexsort((ts[rows], owner[rows]))]
    earlier, later = rows[:-1], rows[1:]
    close = (owner[earlier] == owner[later]) & (ts[later] - ts[earlier] < SAME_STOP_NS)
    earlier, later = earlier[close], later[close]
    for _ in range(len(earlier)):  # chains of close uses settle in a few passes
        moved = merchant[later] != merchant[earlier]
        if not moved.any():
            break
        merchant[later[moved]] = merchant[earlier[moved]]


def _day_weights(first_day_ns: int, calendar_days: int) -> np.ndarray:
    days = pd.to_datetime(first_day_ns + np.arange(calendar_days) * NS_PER_DAY, unit="ns")
    payday = np.isin(days.day, [1, 2, 15, 16])
    return WEEKDAY_FACTORS[days.weekday] * np.where(payday, PAYDAY_FACTOR, 1.0)


def _trips(
    users: pd.DataFrame, rng: np.random.Generator, calendar_days: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per user: departure day (-1: no trip), return day, destination city (another city, often abroad)."""
    n = len(users)
    takes_trip = rng.random(n) < min(0.6, TRIP_PROBABILITY_PER_DAY * calendar_days)
    depart = np.where(takes_trip, rng.integers(0, calendar_days, n), -1)
    back = depart + rng.integers(3, 9, n)
    home = users["city_index"].to_numpy()
    home_country = CITIES["country"].to_numpy()[home]
    domestic = CITIES.index[CITIES["country"] == HOME_COUNTRY].to_numpy()
    domestic_trip = (home_country == HOME_COUNTRY) & (rng.random(n) < 0.65)
    destination = np.where(domestic_trip, rng.choice(domestic, n), rng.integers(0, len(CITIES), n))
    clash = destination == home
    destination[clash] = (destination[clash] + 1) % len(CITIES)
    return depart, back, destination


def _pick_merchants(
    rng: np.random.Generator,
    candidates: np.ndarray,
    merchants: pd.DataFrame,
    user_index: np.ndarray,
    seed: int,
    salt: int,
) -> np.ndarray:
    """A user's regular merchants (a stable hash of seed, user and slot) most of the time, else by popularity."""
    n = len(user_index)
    slot_weights = 1.0 / np.arange(1, FAVOURITE_SLOTS + 1)
    slot = rng.choice(FAVOURITE_SLOTS, size=n, p=slot_weights / slot_weights.sum())
    stream = _mix64(np.uint64(seed) ^ np.uint64(salt * 0x9E37 + 17))
    key = _mix64(stream ^ (user_index.astype(np.uint64) << np.uint64(8)) ^ slot.astype(np.uint64))
    favourite = candidates[(key % np.uint64(len(candidates))).astype(np.int64)]
    popularity = merchants["popularity"].to_numpy()[candidates]
    other = rng.choice(candidates, size=n, p=popularity / popularity.sum())
    return np.where(rng.random(n) < SHARE_AT_FAVOURITES, favourite, other)


def _mix64(x: np.ndarray | np.uint64) -> np.ndarray:
    """splitmix64 finaliser: a well-spread 64-bit hash, vectorised."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _traffic_entropy(config: SimulationConfig) -> list[int]:
    index, count = config.partition
    return [
        config.seed,
        index,
        count,
        _ns(config.start) // NS_PER_SECOND,
        config.days,
        zlib.crc32(config.id_prefix.encode()),
    ]


def _ns(moment: datetime) -> int:
    return pd.Timestamp(moment).as_unit("ns").value


def _finalise(frame: pd.DataFrame, config: SimulationConfig) -> pd.DataFrame:
    """Canonical columns sorted by time, with ids unique within this call, checked by the schema's rules."""
    frame["ts"] = frame["ts"] // 1_000_000 * 1_000_000  # millisecond timestamps, as card networks log them
    frame = frame.sort_values(["ts", "user_id"], kind="stable").reset_index(drop=True)
    width = len(str(max(len(frame) - 1, 0)))
    sequence = pd.Series(np.arange(len(frame))).astype(str).str.zfill(width)
    frame["transaction_id"] = (f"{config.id_prefix}-{config.partition[0]}-" + sequence).to_numpy(dtype=object)
    frame["timestamp"] = pd.to_datetime(frame["ts"].to_numpy(), unit="ns", utc=True)
    frame["currency"] = DEFAULT_CURRENCY
    return validate_frame(frame[[*CANONICAL_COLUMNS, LABEL_COLUMN, SCENARIO_COLUMN]], labelled=True)
