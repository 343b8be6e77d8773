"""The house's walls: the import-linter contracts of pyproject.toml, and no loop through importlib.

import-linter sees static imports only. kit.cli imports every command's module through
importlib (its COMMANDS registry) and the preflight imports its MODULES the same way, so the
second test adds those edges by hand and checks that no command module leads back to kit.cli.
"""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
grimp = pytest.importorskip("grimp", reason="import-linter is not installed (pip install -r requirements.txt)")


def test_import_linter_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "lint-imports not found next to this Python (pip install import-linter)"
    proc = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_no_loop_back_to_cli_through_importlib():
    from kit import cli
    from kit.flow import preflight

    graph = grimp.build_graph("kit")
    dynamic = {module for module, _ in cli.COMMANDS.values()}
    dynamic |= {m for m in preflight.MODULES if m.startswith("kit.")}
    for module in sorted(dynamic):
        assert module in graph.modules, f"{module} (named in a registry) does not exist"
        chain = graph.find_shortest_chain(importer=module, imported="kit.cli")
        assert chain is None, f"kit.cli imports {module} (importlib), which leads back: {chain}"


def test_each_command_lives_in_a_module_named_after_it_or_says_so():
    from kit import cli

    for command, (module, _) in cli.COMMANDS.items():
        stem = module.rsplit(".", 1)[1]
        path = ROOT / (module.replace(".", "/") + ".py")
        first = path.read_text(encoding="utf-8").split('"""')[1].splitlines()[0]
        assert stem == command.replace("-", "_") or f"``{command}``" in first, \
            f"{module} serves `{command}`: name it after the command or say so in its first line"


def test_the_top_level_stays_small():
    top = [p for p in (ROOT / "kit").glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert len(top) <= 12, sorted(p.name for p in top)
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "kit").rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert not long, f"files over 400 lines: {long}"
