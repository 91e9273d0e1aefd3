"""The architecture holds: imports point down the layers (import-linter), ruff finds nothing, and the code is in
ruff's format."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cluster", "training", "serve", "simulation", "fraudctl")
BIN = Path(sys.executable).parent


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "lint-imports"), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": str(BIN)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_layers_contract_holds() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    "module, upward",
    [
        ("cluster/schema.py", "from serve import app as _upward"),
        ("training/policy.py", "import simulation.generator as _upward"),
        ("serve/coalesce.py", "from fraudctl import up as _upward"),
    ],
)
def test_an_upward_import_breaks_the_contract(tmp_path: Path, module: str, upward: str) -> None:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / module).write_text((tmp_path / module).read_text() + f"\n\ndef _late() -> None:\n    {upward}\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout


def test_ruff_is_clean() -> None:
    result = subprocess.run(
        [str(BIN / "ruff"), "check", "--no-cache", *PACKAGES, "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_code_is_in_ruffs_format() -> None:
    result = subprocess.run(
        [str(BIN / "ruff"), "format", "--check", "--no-cache", *PACKAGES, "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
