"""HTTP load from wrk, a load generator outside Python: a generator on the same two cores in Python adds
milliseconds to every request and hides the ratio between the app and its yardsticks.

``wrk_scoring.lua`` sends each request a different simulated transaction under a new id; its figures have the
keys of ``fraudctl.bench.loadgen.run_load`` so the report reads either.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

WRK_SCRIPT = Path(__file__).with_name("wrk_scoring.lua")
ID_SLOT = "\u0000"
THREADS_MAX = 2  # wrk's event loops: the machine's cores are shared with the app it measures


def wrk_path() -> str | None:
    return shutil.which("wrk")


def write_bodies(records: list[dict[str, Any]], path: Path) -> Path:
    """One JSON body per line, split by a tab where the script writes the transaction_id."""
    lines = []
    for record in records:
        body = json.dumps({**record, "transaction_id": ID_SLOT})
        head, tail = body.split(json.dumps(ID_SLOT), 1)
        lines.append(f'{head}"\t"{tail}')
    path.write_text("\n".join(lines) + "\n")
    return path


def run_wrk(
    url: str, bodies: Path, *, connections: int, seconds: float, tag: str, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """Closed-loop load for ``seconds`` with ``connections`` in flight; latency percentiles and completed req/s."""
    wrk = wrk_path()
    if wrk is None:
        raise FileNotFoundError("wrk is not installed (make bench installs it: apt-get install wrk)")
    header_args = [arg for name, value in (headers or {}).items() for arg in ("-H", f"{name}: {value}")]
    command = [
        wrk,
        f"-t{min(THREADS_MAX, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        *header_args,
        "-s",
        str(WRK_SCRIPT),
        url,
        "--",
        str(bodies),
        tag,
    ]
    run = subprocess.run(command, capture_output=True, text=True, check=True)
    line = next((line for line in run.stdout.splitlines() if line.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no figures: {run.stdout[-500:]} {run.stderr[-500:]}")
    raw = json.loads(line.removeprefix("WRK_JSON "))
    seconds_run = raw["duration_us"] / 1e6
    return {
        "requests": raw["requests"],
        "p50_ms": round(raw["p50_us"] / 1000, 2),
        "p90_ms": round(raw["p90_us"] / 1000, 2),
        "p99_ms": round(raw["p99_us"] / 1000, 2),
        "max_ms": round(raw["max_us"] / 1000, 2),
        "errors": raw["socket_errors"] + raw["non_2xx"],
        "concurrency": connections,
        "rps": round(raw["requests"] / seconds_run, 1) if seconds_run else None,
        "load_generator": "wrk",
    }
