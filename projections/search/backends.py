"""The search backends there are, and the one place the API's is built: the SQLite index's today
(``projections.search.sqlite_query``); Elasticsearch will be chosen here too."""

from __future__ import annotations

from projections.search.backend import SearchBackend
from projections.search.sqlite_index import SQLiteSearchIndex
from projections.search.sqlite_query import SQLiteSearch


def open_backend(index: SQLiteSearchIndex) -> SearchBackend:
    """The API's search backend over the search index it follows the log with."""
    return SQLiteSearch(index)
