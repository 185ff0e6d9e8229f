"""Imports go downwards only, with no cycles: the import-linter contracts in pyproject.toml.

The core knows no concrete expert and no CLI; its layers (demo > train | inference | labeling
> model | data > checkpoint | text | semantic | runner … > registry > experts > specs > errors)
import only downwards; no package has a cycle among its modules, function-level imports
included. A failure prints which import breaks which contract.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "4 kept, 0 broken" in result.stdout
