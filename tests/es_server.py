"""An Elasticsearch-compatible server for tests: the ``noida-db`` binary of the PyPI wheel
(``bench.noida``), on a free loopback port, its data in a temporary directory, one per test session.
Each user of it takes an index prefix of its own (``prefix``), so tests running together never see
each other's indexes. Where noida lacks what a real cluster has, the test that meets it says so
(the README lists the gaps).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from bench.noida import SearchServer, noida_binary


def prefix() -> str:
    """An index prefix of its own for one user of the server."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def es_server(tmp_path_factory) -> Iterator[SearchServer]:
    if noida_binary() is None:
        if os.environ.get("CI"):  # as for PostgreSQL and the broker: in CI a missing one fails
            pytest.fail("the noida-db binary (PyPI wheel noida-db) is not installed")
        pytest.skip("the noida-db binary (PyPI wheel noida-db) is not installed")
    server = SearchServer(tmp_path_factory.mktemp("noida")).start()
    yield server
    server.stop()
