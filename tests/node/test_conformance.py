"""The black-box etcdctl conformance suite (../shared/conformance) against our own clusters."""
import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.etcdctl

SUITE = Path(__file__).resolve().parents[2].parent / "shared" / "conformance"


@pytest.mark.skipif(not (SUITE / "run.sh").exists(), reason=f"no conformance suite at {SUITE}")
@pytest.mark.parametrize("size", [1, 3])
def test_conformance_suite(cluster_factory, size, tmp_path):
    c = cluster_factory(size)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCDCTL_", "CONF_"))}
    env["ETCDCTL_ENDPOINTS"] = c.endpoints
    if size > 1:
        env["CONF_CLUSTER_ENDPOINTS"] = c.endpoints
    env["CONF_SCRATCH"] = str(tmp_path)
    p = subprocess.run([str(SUITE / "run.sh"), "-q"], env=env,
                       capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
