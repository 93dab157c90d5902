"""The README's Python quickstart, run as written in a fresh process outside the checkout."""

import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT


def quickstart_code() -> str:
  with open(os.path.join(ROOT, "README.md")) as f:
    readme = f.read()
  match = re.search(r"<!-- quickstart -->\n```python\n(.*?)```", readme, re.S)
  assert match, "the README lost its quickstart block"
  return match.group(1)


@pytest.mark.slow
def test_readme_quickstart_runs(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT)
  res = subprocess.run([sys.executable, "-c", quickstart_code()], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  assert re.search(r"-\(K - L_null\) = -?\d+\.\d{3} \+- \d+\.\d{3} bits/pixel", res.stdout)
  assert "'kl':" in res.stdout and "'L_null':" in res.stdout
  assert os.path.isdir(tmp_path / "runs" / "quickstart" / "checkpoints" / "20")
