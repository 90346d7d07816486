"""The search backends there are, and the one place the API's is built: the SQLite index's
(``projections.search.sqlite_query``, the embedded default) or Elasticsearch's
(``projections.search.es_query``)."""

from __future__ import annotations

from projections.search.backend import SearchBackend
from projections.search.sqlite_index import SQLiteSearchIndex
from projections.search.sqlite_query import SQLiteSearch


def open_backend(index: SQLiteSearchIndex, es: object | None = None) -> SearchBackend:
    """The API's search backend: over ``es`` (an ``ElasticsearchIndex``) when given, else over
    the SQLite search index."""
    if es is not None:
        from projections.search.es_index import ElasticsearchIndex
        from projections.search.es_query import ElasticsearchSearch

        assert isinstance(es, ElasticsearchIndex)
        return ElasticsearchSearch(es)
    return SQLiteSearch(index)


def open_es_index(url: str, prefix: str, analyzer: str = "standard"):
    """The Elasticsearch search index read model (the ``elasticsearch`` client imported here)."""
    from projections.search.es_index import ElasticsearchIndex

    return ElasticsearchIndex(url, prefix, analyzer)
