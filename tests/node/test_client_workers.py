"""--client-workers: gRPC served by intake processes beside the member (node/intake.py)."""
import os
import select
import signal
import subprocess
import sys
import time

import psutil
import pytest

import harness
from harness import etcdctl, wait_until

pytestmark = pytest.mark.etcdctl


def _intakes(node: harness.Node) -> list[psutil.Process]:
    return [p for p in psutil.Process(node.proc.pid).children()
            if "shardkv.node.intake" in " ".join(p.cmdline())]


def test_kill_9_takes_the_intake_processes_along_and_a_restart_serves_again(cluster_factory):
    c = cluster_factory(3, ["--client-workers=2"])
    n = c.nodes[0]
    assert etcdctl(c.endpoints, "put", "k", "v").returncode == 0
    intakes = _intakes(n)
    assert len(intakes) == 2
    n.kill(signal.SIGKILL)
    gone, alive = psutil.wait_procs(intakes, timeout=10)
    assert not alive, "intake processes outlived their member"
    n.start()  # same client port: free again at once
    harness.wait_ready(c)
    p = etcdctl(n.client_url, "get", "k", "--print-value-only")
    assert (p.returncode, p.stdout) == (0, "v\n"), p.stderr
    # a clean stop stops them too
    intakes = _intakes(n)
    n.kill(signal.SIGTERM)
    gone, alive = psutil.wait_procs(intakes, timeout=10)
    assert not alive


def test_a_second_member_on_the_same_client_port_fails_like_etcd(cluster_factory, tmp_path):
    c = cluster_factory(1, ["--client-workers=1"])
    first = c.nodes[0]
    [peer] = harness.free_ports(1)
    args = ["--name", "other", "--data-dir", str(tmp_path / "other"),
            "--listen-client-urls", first.client_url, "--advertise-client-urls", first.client_url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"other=http://127.0.0.1:{peer}", "--client-workers=1"]
    p = subprocess.run([sys.executable, "-m", "shardkv.node.cli", *args], capture_output=True,
                       text=True, timeout=60, env=os.environ)
    assert p.returncode != 0
    assert "bind: address already in use" in p.stderr
    assert etcdctl(first.client_url, "put", "still", "served").returncode == 0


def test_errors_and_streams_pass_through_unchanged(cluster_factory):
    c = cluster_factory(1, ["--client-workers=1"])
    url = c.nodes[0].client_url
    etcdctl(url, "put", "a", "1")
    p = etcdctl(url, "get", "a", "--rev=100")
    assert p.returncode != 0
    assert "etcdserver: mvcc: required revision is a future revision" in p.stderr
    p = etcdctl(url, "lease", "keep-alive", "--once", "123")  # proxied, with its error
    assert p.returncode != 0 and "requested lease not found" in p.stderr
    watch = subprocess.Popen([harness.ETCDCTL, f"--endpoints={url}", "watch", "w"],
                             stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "ETCDCTL_API": "3"})
    try:
        # the watch may not be registered yet when the first puts land: put until it reports
        deadline = time.monotonic() + 20
        while not select.select([watch.stdout], [], [], 0.2)[0]:
            assert time.monotonic() < deadline, "the watch through the intake saw nothing"
            etcdctl(url, "put", "w", "x")
        assert [watch.stdout.readline().strip() for _ in range(3)] == ["PUT", "w", "x"]
    finally:
        watch.kill()
        watch.wait(5)


def test_grpcio_front_end_still_serves(cluster_factory):
    """--grpc-server grpcio: the member answers through grpc.aio instead of shardkv.grpcwire."""
    c = cluster_factory(1, ["--grpc-server=grpcio"])
    assert etcdctl(c.endpoints, "put", "k", "v").returncode == 0
    p = etcdctl(c.endpoints, "get", "k", "--print-value-only")
    assert (p.returncode, p.stdout) == (0, "v\n"), p.stderr
