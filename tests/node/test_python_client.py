"""python-etcd3 (PyPI `etcd3`, the most used Python etcd v3 client) against 3 shardkv members,
used as its documentation shows: put/get/get_prefix/delete, watch/watch_prefix/
add_watch_callback/watch_once, leases (lease=, refresh, revoke, TTL expiry), transactions,
maintenance (snapshot, hash, defragment, alarms), members (add, update, remove)
and its lock recipe with two clients contending. See etcd3_client_script.py for the checks.

etcd3 0.12.0's generated protobuf modules need protobuf 3.x (this project runs protobuf 7), and
its lock uses tenacity's pre-7 wait signature. So the client runs in its own virtualenv, created
once and cached under the temp dir, with exactly what it needs pinned; the test drives it
through the script and checks its report. The test skips when the packages cannot be
installed (no package index reachable).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import harness  # noqa: E402

pytestmark = pytest.mark.etcdctl  # multi-process (uses the etcdctl harness for readiness)

REQUIREMENTS = ["etcd3==0.12.0", "protobuf>=3.20,<4", "tenacity>=6.1,<7", "grpcio"]
VENV = Path(tempfile.gettempdir()) / "shardkv-test-etcd3-venv-1"
SCRIPT = Path(__file__).with_name("etcd3_client_script.py")


def etcd3_python() -> Path:
    """The interpreter of the cached virtualenv holding etcd3 (created on first use)."""
    python = VENV / "bin" / "python"
    if (VENV / "ready").exists():
        return python
    build = Path(tempfile.mkdtemp(prefix="shardkv-etcd3-venv-", dir=VENV.parent))
    try:
        subprocess.run([sys.executable, "-m", "venv", str(build)], check=True,
                       capture_output=True, timeout=120)
        r = subprocess.run([str(build / "bin" / "pip"), "install", "-q", *REQUIREMENTS],
                           capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            pytest.skip("cannot install python-etcd3 into a virtualenv (package index "
                        f"unreachable?): {r.stderr.strip().splitlines()[-1:]}")
        subprocess.run([str(build / "bin" / "python"), "-c", "import etcd3"], check=True,
                       capture_output=True, timeout=60)
        (build / "ready").write_text(" ".join(REQUIREMENTS) + "\n")
        try:
            # only bin/python is used: it still works after the move (its pip does not)
            os.rename(build, VENV)
        except OSError:
            if (VENV / "ready").exists():  # another run won the race
                return python
            raise
    except subprocess.TimeoutExpired:
        pytest.skip("installing python-etcd3 timed out (package index unreachable?)")
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return python


def test_python_etcd3_client(tmp_path):
    python = etcd3_python()
    cluster = harness.make_cluster(tmp_path / "c", 3)
    try:
        for n in cluster.nodes:
            n.start()
        harness.wait_ready(cluster)
        eps = ",".join(f"127.0.0.1:{n.client_port}" for n in cluster.nodes)
        r = subprocess.run([str(python), str(SCRIPT), eps], capture_output=True, text=True,
                           timeout=150)
    finally:
        cluster.close()
    results = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    failed = [f"{x['check']}: {x['detail']}" for x in results if not x["ok"]]
    assert not failed, "\n\n".join(failed)
    assert len(results) == 18, (r.stdout, r.stderr[-3000:])
