import os
import subprocess
import sys

import pytest

CASES = [
    ("import spikekernels, os; print(os.environ.get('OMP_WAIT_POLICY'))", {}, "PASSIVE"),
    ("import torch, spikekernels, os; print(os.environ.get('OMP_WAIT_POLICY'))", {}, "None"),
    ("import spikekernels, os; print(os.environ.get('OMP_WAIT_POLICY'))", {"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE"),
    ("import sresnet, os; print(os.environ.get('OMP_WAIT_POLICY'))", {}, "PASSIVE"),
]


@pytest.mark.parametrize("code,env,expected", CASES, ids=["first", "after-torch", "user-set", "via-sresnet"])
def test_openmp_wait_policy(code, env, expected):
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-1000:]
    assert out.stdout.strip().splitlines()[-1] == expected
