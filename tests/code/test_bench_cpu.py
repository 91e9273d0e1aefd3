"""The bench's CPU accounting (processes attributed to their role, figures per 1,000 transactions) and its
output (stdout carries only the JSON)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

import fraudctl.bench
from cluster.config import Settings
from fraudctl.bench.cpu import DRIVER_ROLE, cpu_by_role, cpu_figures

BURN = "import time, sys\nstart = time.process_time()\nwhile time.process_time() - start < 0.3: pass\nprint('burnt', flush=True)\ntime.sleep(60)"


def test_a_child_process_is_counted_in_its_role() -> None:
    child = subprocess.Popen([sys.executable, "-c", BURN, "moto.server"], stdout=subprocess.PIPE, text=True)
    try:
        with cpu_by_role() as spent:
            assert child.stdout is not None and child.stdout.readline().strip() == "burnt"
    finally:
        child.kill()
        child.wait()
    assert spent["aws emulator"] >= 0.2
    assert DRIVER_ROLE in spent


def test_figures_leave_the_driver_out_of_the_service() -> None:
    figures = cpu_figures({"ingress": 0.06, "aws emulator": 0.04, DRIVER_ROLE: 1.0}, transactions=2_000)
    assert figures["cpu_ms_per_1k_tx"] == {DRIVER_ROLE: 500.0, "ingress": 30.0, "aws emulator": 20.0}
    assert figures["service_cpu_ms_per_1k_tx"] == 50.0
    assert figures["cpu_bound_tx_per_s"] == round((os.cpu_count() or 1) * 2_000 / 0.1)
    assert figures["cpu_bound_tx_per_s_without_aws_emulator"] == round((os.cpu_count() or 1) * 2_000 / 0.06)
    assert cpu_figures({}, transactions=0) == {}


def noisy_section(settings: Settings) -> dict[str, Any]:
    """Stands for a section whose Ray relays a worker's or the raylet's log lines to the driver's stdout."""
    print("(raylet) Task ServeController.graceful_shutdown failed.")
    return {"figure": 1}


def test_bench_stdout_is_one_json_object(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from fraudctl.cli import app

    monkeypatch.setitem(fraudctl.bench.SECTIONS, "noisy", noisy_section)
    result = CliRunner().invoke(app, ["bench", "--only", "noisy"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["noisy"]["figure"] == 1
    assert "graceful_shutdown" in result.stderr
