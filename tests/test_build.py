"""Building the compiled modules: without a C compiler the build stops with one line saying what to install."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_missing_compiler_is_one_clear_error(tmp_path: Path) -> None:
    env = {**os.environ, "CC": str(tmp_path / "no-such-cc")}
    out = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--force", "-b", str(tmp_path / "lib"),
                          "-t", str(tmp_path / "tmp")], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last == (f"kvstore has compiled modules and cannot build them: no C compiler ('{tmp_path / 'no-such-cc'}'"
                    " not found). On Debian or Ubuntu: sudo apt-get install gcc python3-dev (make up / make test do "
                    "it for you)")
    assert not (tmp_path / "lib").exists()  # nothing was built
