"""The library stays free of the UI layer."""

import pkgutil
import subprocess
import sys

import tinylora
from conftest import ROOT


def test_library_never_imports_streamlit():
    modules = [f"tinylora.{m.name}" for m in pkgutil.walk_packages(tinylora.__path__) if not m.ispkg and m.name != "__main__"]
    modules += [f"tinylora.commands.{m.name}" for m in pkgutil.iter_modules([str(ROOT / "tinylora" / "commands")])]
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'streamlit'))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert "tinylora.jobs" in modules
    assert "tinylora.commands.train" in modules


def test_library_source_has_no_streamlit_import():
    for path in (ROOT / "tinylora").rglob("*.py"):
        text = path.read_text()
        assert "import streamlit" not in text, path
        assert "from streamlit" not in text, path
