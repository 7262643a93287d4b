import subprocess
import sys

import pytest

pytestmark = pytest.mark.subprocess


def test_engine_does_not_import_textual_or_rich():
    code = (
        "import sys, tuiconsole.engine.trainer, tuiconsole.session, tuiconsole.headless;"
        "bad = [m for m in ('textual', 'rich') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_cli_help_does_not_import_torch():
    code = (
        "import sys; sys.argv = ['tuiconsole', '--help'];"
        "from tuiconsole import cli\n"
        "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "run" in r.stdout
