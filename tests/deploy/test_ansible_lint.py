"""ansible/ passes ansible-lint with the production profile (offline: only ansible.builtin is used)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_helpers import ANSIBLE_DIR, tool


@pytest.mark.timeout(300)
@pytest.mark.skipif(tool("ansible-lint") is None, reason="ansible-lint is not installed: pip install -e '.[deploy]'")
def test_ansible_lint_production_profile_passes(tmp_path: Path) -> None:
    env = {**os.environ, "ANSIBLE_HOME": str(tmp_path), "NO_COLOR": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([tool("ansible-lint"), "--profile", "production", "--offline", "--nocolor"],
                          cwd=ANSIBLE_DIR, env=env, capture_output=True, text=True, timeout=280)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert "Profile 'production' was required, and it passed" in output, output[-3000:]
