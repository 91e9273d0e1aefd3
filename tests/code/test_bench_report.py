"""The README's figures come from a bench run's JSON: every row reads a key the bench writes."""

from __future__ import annotations

from pathlib import Path

from fraudctl.bench.report import ROWS, markdown, write_markdown

FIGURES = {
    "machine": {"cpus": 2, "python": "3.11.7"},
    "features_online": {"tx_per_s": 37219, "user_state_mb_per_100k_users": 37.1},
    "serving": {
        "app": {"concurrency_1": {"p50_ms": 23.0}, "concurrency_32": {"rps": 281.0}},
        "noop": {"concurrency_1": {"p50_ms": 10.0}, "concurrency_32": {"rps": 141.0}},
        "single_noop": {"concurrency_1": {"p50_ms": 0.25}},
        "p50_ratio_c1": 2.3,
        "p50_ratio_c1_floor": 1.9,
        "batch": {"transactions_per_s": 11800.0},
    },
}


def test_table_rows_for_the_measured_sections_only(tmp_path: Path) -> None:
    table = markdown(FIGURES)
    assert "| online features through the state actors | 37,219 tx/s | ≥ 20,000 tx/s |" in table
    assert "| HTTP c=1 p50, app / composed no-op / single no-op (wrk) | 23.00 / 10.00 / 0.25 ms | — |" in table
    assert "2.30× (floor 1.90×)" in table
    assert "stream" not in table.lower().split("| figure")[1]  # no stream section in this run
    write_markdown(FIGURES, tmp_path / "benchmarks.md")
    assert (tmp_path / "benchmarks.md").read_text().startswith("# Benchmarks")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:start -->\nold table\n<!-- bench:end -->\nafter\n")
    write_markdown(FIGURES, readme)
    text = readme.read_text()
    assert text.startswith("intro\n<!-- bench:start -->\nMeasured by") and text.endswith("<!-- bench:end -->\nafter\n")
    assert "old table" not in text


def test_every_section_of_the_table_is_a_bench_section() -> None:
    from fraudctl.bench import SECTIONS

    assert set(ROWS) <= set(SECTIONS)
