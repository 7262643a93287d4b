"""The console is a Session client: importing it must not import torch (or touch a model)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.subprocess


def test_importing_the_console_does_not_import_torch() -> None:
    code = "import sys, tuiconsole.ui.app, tuiconsole.ui.palette;print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"
