"""Light commands start without the deep-learning stack.

``prismer --help`` or ``prismer experts list`` must not pay seconds of torch/transformers
import: the CLI modules import the model, training and data code inside the commands that
use them. Each command runs as a user runs it, under ``python -X importtime``, whose report
names every module the process imported.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

#: Top-level packages that cost seconds to import; none belongs in a light command.
HEAVY = ("torch", "transformers", "open_clip", "timm", "cv2", "ultralytics", "segment_anything", "deepspeed",
         "onnxruntime", "rapidocr_onnxruntime")

LIGHT_COMMANDS = [
    ["--help"],
    ["experts", "list"],
    ["experts", "info", "edge"],
    ["model", "specs"],
    ["model", "info", "--help"],
    ["data", "--help"],
    ["label", "--help"],
    ["train", "--help"],
    ["embedders", "--help"],
    ["serve", "--help"],
]


def imported_modules(*args: str) -> set[str]:
    """Every module the command ``prismer ARGS`` imports, read from ``-X importtime``."""
    env = {k: v for k, v in os.environ.items() if k != "PRISMER_LOAD_PLUGINS"}
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "prismer_cli.main", *args],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # Lines read "import time: SELF | CUMULATIVE | <indent>module.name".
    return {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }


@pytest.mark.parametrize("args", LIGHT_COMMANDS, ids=" ".join)
def test_light_command_does_not_import_torch(args):
    modules = imported_modules(*args)
    # The report is read correctly: the CLI itself and typer are in it.
    assert {"prismer_cli.app", "prismer_core.registry", "typer"} <= modules
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert not heavy, f"`prismer {' '.join(args)}` imports {heavy[:5]}"
