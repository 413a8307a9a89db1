"""The runtime CLI loads neither ``training`` nor ``torch`` unless a training command runs,
and ``cxr-triage train --help`` still shows training's own help."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

PROBE = """
import json, sys
from cxr_triage.cli import build_parser, main
build_parser()
for argv in {argvs!r}:
    try:
        main(argv)
    except SystemExit:
        pass
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & {{"training", "torch"}})))
"""


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args] if not code else [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    "argvs",
    [[["--help"]], [["worklist", "--help"]], [["demo", "--help"], ["up", "--help"]]],
)
def test_runtime_commands_do_not_import_training_or_torch(argvs: list[list[str]]) -> None:
    proc = _python(PROBE.format(argvs=argvs))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == []


def test_training_commands_are_listed_and_forwarded_with_their_full_help() -> None:
    listing = _python("", "-m", "cxr_triage", "--help")
    assert listing.returncode == 0, listing.stderr
    for command in ("train", "evaluate", "calibrate", "predict"):
        assert command in listing.stdout
    train = _python("", "-m", "cxr_triage", "train", "--help")
    assert train.returncode == 0, train.stderr
    assert train.stdout.startswith("usage: cxr-triage train")
    assert "--backbone" in train.stdout  # an option only training.cli defines
    missing = _python("", "-m", "cxr_triage", "predict")
    assert missing.returncode == 2
    assert "cxr-triage predict: error" in missing.stderr
    assert "paths" in missing.stderr
