"""shardkv-admin cluster up/down on a generated TOML topology with free ports."""
import subprocess
import sys

import pytest

from harness import etcdctl, free_ports

pytestmark = pytest.mark.etcdctl


def admin(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shardkv.admin.cli", *args],
                          capture_output=True, text=True, timeout=60)


def test_cluster_up_and_down(tmp_path):
    ports = free_ports(6)
    members = "".join(
        f'\n[[member]]\nname = "m{i}"\nclient_url = "http://127.0.0.1:{ports[2 * i]}"\n'
        f'peer_url = "http://127.0.0.1:{ports[2 * i + 1]}"\n' for i in range(3))
    config = tmp_path / "topo.toml"
    config.write_text(f'[cluster]\ntoken = "t"\ndata_root = "{tmp_path / "data"}"\n'
                      f'heartbeat_interval = 50\nelection_timeout = 500\n{members}')
    try:
        up = admin("cluster", "up", str(config))
        assert up.returncode == 0, up.stderr
        endpoints = up.stdout.strip().splitlines()[-1].split("=", 1)[1]
        assert endpoints.count("http://") == 3
        assert etcdctl(endpoints, "put", "k", "v").stdout == "OK\n"
    finally:
        down = admin("cluster", "down", str(config), "--wipe")
    assert down.returncode == 0 and "stopped: m0, m1, m2" in down.stdout, down.stdout
    assert not (tmp_path / "data").exists()
