"""requirements/agent.lock: current with pyproject.toml, and the core's closure holds no extra's packages."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lock_tool", ROOT / "tools" / "lock.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["lock_tool"] = module
    spec.loader.exec_module(module)
    return module


def test_the_committed_lock_is_current() -> None:
    assert _tool().check() == []


def test_check_catches_a_changed_dependency_list_a_bad_pin_and_a_heavy_package(tmp_path: Path) -> None:
    """Mutations caught: a new core dependency without re-locking, a pin outside a requirement, scipy pulled in."""
    tool = _tool()
    pyproject = (ROOT / "pyproject.toml").read_text()
    lock = (ROOT / "requirements" / "agent.lock").read_text()
    (tmp_path / "pyproject.toml").write_text(pyproject.replace('  "numpy>=1.26",', '  "numpy>=1.26",\n  "rich>=13",'))
    (tmp_path / "agent.lock").write_text(lock)
    problems = tool.check(tmp_path / "agent.lock", tmp_path / "pyproject.toml")
    assert any("run `make lock`" in p for p in problems) and any(p.startswith("rich: ") for p in problems)

    (tmp_path / "pyproject.toml").write_text(pyproject)
    (tmp_path / "agent.lock").write_text(lock.replace("numpy==", "numpy==1.0.0\n# was numpy==") + "scipy==1.17.1\n")
    problems = tool.check(tmp_path / "agent.lock", tmp_path / "pyproject.toml")
    assert any("numpy==1.0.0" in p and "does not satisfy" in p for p in problems)
    assert any(p.startswith("scipy is in the core's closure") for p in problems)
