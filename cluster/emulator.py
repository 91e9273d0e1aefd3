"""The embedded AWS's process (``python -m cluster.emulator``): moto's application, the one ``moto.server`` runs,
served by waitress instead of werkzeug's development server, with moto's Kinesis shard lookups made constant-time.

Two costs of ``moto.server`` that real AWS does not have, and that grow the emulator's share of every run:

- werkzeug's server closes the connection after every response (its ``Connection: close``), so each boto3 call
  opens a new TCP connection and the server starts a thread for it; waitress keeps HTTP/1.1 connections alive and
  answers from a fixed pool of threads.
- moto's Kinesis shard finds its last sequence number by listing every record it holds, once per record put, and
  ``GetRecords`` walks the shard from its first record: putting and reading cost more the longer the stream, so a
  long ``make run-local`` or bench slowed down as it went. The replacements give the same answers (each shard's
  sequence numbers are consecutive from 1, so a record is found by its number).

The wire protocols are moto's, untouched: this module changes how requests reach moto and two lookups inside it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from moto.kinesis.models import Record, Shard
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from waitress import serve

SERVER_THREADS = 16  # requests answered at once: a slow call (a put of 500 records) must not hold up the rest
CONNECTION_LIMIT = 2000  # every Ray worker keeps a pool of keep-alive connections per AWS service
IDLE_CONNECTION_S = 300
_ORIGINAL_GET_RECORDS = Shard.get_records  # moto's walk, for a shard whose numbers have a gap


def first_sequence_number(shard: Shard) -> int:
    return next(iter(shard.records), 0)


def last_sequence_number(shard: Shard) -> int:
    return next(reversed(shard.records), 0)


def records_after(shard: Shard, last_sequence_id: str, limit: int | None) -> tuple[list[Record], int, int]:
    """moto's ``Shard.get_records`` without the walk from the shard's first record: the records numbered after
    ``last_sequence_id`` are read by number while the numbers are consecutive (moto assigns last + 1)."""
    records = shard.records
    first, last = first_sequence_number(shard), last_sequence_number(shard)
    if not records or last - first + 1 != len(records):
        return _ORIGINAL_GET_RECORDS(shard, last_sequence_id, limit)
    start = max(int(last_sequence_id) + 1, first)
    stop = last + 1 if limit is None else min(last + 1, start + limit)
    results = [records[number] for number in range(start, stop)]
    if not results:
        return [], int(last_sequence_id), 0
    behind_s = records[last].created_at - results[-1].created_at
    return results, results[-1].sequence_number, int(behind_s * 1000)


def constant_time_shards() -> None:
    """Replace moto's linear Kinesis shard lookups with the ones above (same results, asserted in the tests)."""
    Shard.get_min_sequence_number = first_sequence_number
    Shard.get_max_sequence_number = last_sequence_number
    Shard.get_records = records_after


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    os.environ.setdefault("MOTO_PORT", str(args.port))  # as moto.server sets it: moto writes it into queue URLs
    constant_time_shards()
    serve(
        DomainDispatcherApplication(create_backend_app),
        host=args.host,
        port=args.port,
        threads=SERVER_THREADS,
        connection_limit=CONNECTION_LIMIT,
        channel_timeout=IDLE_CONNECTION_S,
        asyncore_use_poll=True,  # select() stops at 1,024 descriptors
        ident="moto",
        _quiet=True,
    )


if __name__ == "__main__":
    main()
