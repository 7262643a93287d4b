"""What each side of the seam pulls in at import time, in a fresh interpreter.

`lint-imports` (pyproject's [tool.importlinter]) checks the layering statically, lazy
imports included; these check what an import really loads: the engine no UI library,
and the front-ends (the CLI's --help, the console, the remote client) no torch, which
takes seconds to import and is the training process's business.
"""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.subprocess  # each check is a fresh interpreter


def test_engine_does_not_import_textual_or_rich():
    code = (
        "import sys, tuiconsole.engine.trainer, tuiconsole.session, tuiconsole.headless;"
        "bad = [m for m in ('textual', 'rich') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


_HELP = (
    "sys.argv = ['tuiconsole', '--help']\n"
    "from tuiconsole import cli\n"
    "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
)
_CONSOLE = "import tuiconsole.ui.app, tuiconsole.ui.palette\n"
_REMOTE = (
    "import tuiconsole.remote.client, tuiconsole.remote.registry, "
    "tuiconsole.remote.protocol, tuiconsole.remote.attach\n"
)


@pytest.mark.parametrize(
    ("code", "unwanted", "printed"),
    [
        # The help must really print (the check runs after it): "attach" is a command.
        (_HELP, ("torch",), "attach"),
        (_CONSOLE, ("torch",), ""),
        (_REMOTE, ("torch", "textual"), ""),
    ],
    ids=["tuiconsole --help", "console", "remote client"],
)
def test_front_ends_do_not_import_torch(code: str, unwanted: tuple[str, ...], printed: str) -> None:
    check = f"import sys\n{code}print('loaded:', [m for m in {unwanted!r} if m in sys.modules])\n"
    r = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "loaded: []" in r.stdout, r.stdout
    assert printed in r.stdout
