"""The official examples test with searches answered by Elasticsearch: its index takes them in
too (every 5th example)."""

from __future__ import annotations

import pytest

from tests.conftest import live_server
from tests.es_server import es_server  # noqa: F401 - fixture
from tests.test_examples import examples  # noqa: F401 - fixture
from tests.test_examples import test_every_accepted_example_round_trips  # noqa: F401 - collected here


@pytest.fixture(scope="module")
def live(request, tmp_path_factory):
    with live_server(request, tmp_path_factory, "elasticsearch") as server:
        yield server
