import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import harness  # noqa: E402


@pytest.fixture
def cluster_factory(tmp_path):
    """make(size, extra flags) -> started Cluster; every process is killed at teardown."""
    made: list[harness.Cluster] = []

    def make(size: int, extra: list[str] | None = None) -> harness.Cluster:
        c = harness.make_cluster(tmp_path / f"c{len(made)}", size, extra)
        made.append(c)
        for node in c.nodes:
            node.start()
        harness.wait_ready(c)
        return c

    yield make
    for c in made:
        c.close()


def pytest_configure(config):
    config.addinivalue_line("markers", "etcdctl: drives real shardkv-node processes with etcdctl")


def pytest_collection_modifyitems(config, items):
    if harness.ETCDCTL is None:
        skip = pytest.mark.skip(reason="etcdctl not on PATH")
        for item in items:
            if "etcdctl" in item.keywords:
                item.add_marker(skip)
