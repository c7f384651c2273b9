"""Every script in scripts/ starts: its imports resolve and ``--help`` exits 0 (a moved name breaks this).

All scripts run in one child process (``runpy``, as ``__main__``, with ``--help``), so torch and the
project are imported once rather than once per script; the child reports each script's outcome.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "scripts").glob("*.py"))

#: The child: run every script given on the command line with ``--help``; print one JSON object.
CHILD = r"""
import contextlib, io, json, runpy, sys, traceback
results = {}
for path in sys.argv[1:]:
    out, err = io.StringIO(), io.StringIO()
    sys.argv = [path, "--help"]
    code = None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(path, run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        code, err = 1, io.StringIO(traceback.format_exc())
    results[path] = {"code": code, "stdout": out.getvalue()[:2000], "stderr": err.getvalue()[-2000:]}
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def help_runs() -> dict[str, dict]:
    """Each script's exit code and output of ``--help``, from one child process."""
    done = subprocess.run([sys.executable, "-c", CHILD, *map(str, SCRIPTS)], capture_output=True, text=True,
                          timeout=200)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(240)
@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_script_help_runs(script: Path, help_runs: dict[str, dict]) -> None:
    result = help_runs[str(script)]
    assert result["code"] == 0, result["stderr"]
    assert "usage" in result["stdout"].lower()
