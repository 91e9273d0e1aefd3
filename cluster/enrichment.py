"""Profile rows for feature enrichment: online through ``ProfileStore`` (TTL cache), offline by one table scan."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from cluster.config import Settings, get_settings
from cluster.profiles import (MERCHANT_PROFILE_COLUMNS, USER_PROFILE_COLUMNS, ProfileStore, conform,
                              scan_profiles)


def fetch_profiles(store: ProfileStore, ids: Iterable[str], columns: dict[str, str]) -> pd.DataFrame:
    """The profiles of ``ids`` that exist, in the profile dtypes (one BatchGetItem per batch of cache misses)."""
    found = [row for row in store.get_many(ids).values() if row is not None]
    return conform(pd.DataFrame(found), columns)


def scan_all_profiles(settings: Settings | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every user and merchant profile, for the offline builder."""
    settings = settings or get_settings()
    return (scan_profiles(settings.user_table, USER_PROFILE_COLUMNS, settings),
            scan_profiles(settings.merchant_table, MERCHANT_PROFILE_COLUMNS, settings))
