"""wrk's wrapper: bodies split where the script writes each id, and a real wrk run against a loopback server that
records what it was sent (every id new, every body the JSON of a simulated transaction)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fraudctl.bench.wrk import run_wrk, write_bodies, wrk_path

RECORDS = [
    {
        "transaction_id": f"t{i}",
        "user_id": f"u{i % 3}",
        "merchant_id": f"m{i % 2}",
        "amount": 10.5 + i,
        "note": 'tab\there, quote " and \u00e9',
    }
    for i in range(5)
]


def test_each_body_line_splits_once_where_the_id_goes(tmp_path: Path) -> None:
    lines = write_bodies(RECORDS, tmp_path / "bodies").read_text().splitlines()
    assert len(lines) == len(RECORDS)
    for record, line in zip(RECORDS, lines):
        head, tail = line.split("\t")
        assert json.loads(f"{head}new-id{tail}") == {**record, "transaction_id": "new-id"}


@pytest.mark.skipif(wrk_path() is None, reason="wrk is installed by `make install-dev`")
def test_wrk_sends_every_request_a_new_id_and_reports_its_figures(tmp_path: Path) -> None:
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        figures = run_wrk(
            f"http://127.0.0.1:{server.server_port}/api/check-fraud",
            write_bodies(RECORDS, tmp_path / "bodies"),
            connections=2,
            seconds=1,
            tag="run",
        )
    finally:
        server.shutdown()
    assert figures["requests"] >= len(RECORDS) and figures["errors"] == 0 and figures["rps"] > 0
    assert 0 < figures["p50_ms"] <= figures["p99_ms"]
    ids = [body["transaction_id"] for body in received]
    assert len(set(ids)) == len(ids) and all(i.startswith("run-") for i in ids)
    assert {body["user_id"] for body in received} == {"u0", "u1", "u2"}
