"""The read models, listed once: the CLI (``hub projections``) and the API's lifespan open them
from here, each in its own SQLite file in the data directory (on any event store).

A model's class is imported when it is opened, so listing the names stays cheap for the CLI.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Protocol, TypeVar

from hub.core.sqlitefile import UnreadableDatabase, naming
from projections.contract import ReadModel

M = TypeVar("M")


class ListedReadModel(ReadModel, Protocol):
    """A read model listed here: the contract, and its row counts for ``hub projections status``."""

    def stats(self) -> dict[str, int]:
        """Rows per table."""
        ...


@dataclass(frozen=True)
class ReadModelSpec:
    name: str  # its tracking name, and the name ``hub projections`` takes
    file: str  # its SQLite file in the data directory
    cls: str  # "module:Class", a ``ReadModel``
    about: str

    def model_class(self) -> Callable[[Path], ListedReadModel]:
        module, _, attr = self.cls.partition(":")
        return getattr(import_module(module), attr)

    def path(self, data_dir: Path) -> Path:
        return Path(data_dir) / self.file

    def open(self, data_dir: Path) -> ListedReadModel:
        """Opened, its tables created if new; a file that is no database (or a corrupt one) is
        an ``UnreadableDatabase`` naming it (``hub projections rebuild`` replaces it)."""
        path = self.path(data_dir)
        try:
            with naming(path):
                return self.model_class()(path)
        except UnreadableDatabase as e:
            raise UnreadableDatabase(path, e.cause, "it is made from the event log again by "
                                     f"hub projections rebuild {self.name}") from None


READ_MODELS: tuple[ReadModelSpec, ...] = (
    ReadModelSpec("search", "search.sqlite", "projections.search.sqlite_index:SQLiteSearchIndex",
                  "the search index"),
    ReadModelSpec("quality", "quality.sqlite", "projections.quality:QualityProjection",
                  "document quality findings"),
    ReadModelSpec("terminology", "terminology.sqlite",
                  "projections.terminology:TerminologyProjection",
                  "code systems, value sets, concept maps"),
    ReadModelSpec("unmapped", "unmapped.sqlite", "projections.unmapped:UnmappedProjection",
                  "the unmapped local codes worklist"),
    ReadModelSpec("person", "person.sqlite", "projections.person:PersonProjection",
                  "golden persons from identity events"),
    ReadModelSpec("timeline", "timeline.sqlite", "projections.timeline:TimelineProjection",
                  "each Patient's clinical events in time order"),
    ReadModelSpec("intake", "intake.sqlite", "projections.intake:IntakeCounts",
                  "versions taken in per day, institution, feed and type"),
    ReadModelSpec("identity-candidates", "identity-candidates.sqlite",
                  "hub.mpi.candidates:IdentityCandidates",
                  "features and blocking keys of the master patient index"),
)
BY_NAME = {spec.name: spec for spec in READ_MODELS}


def names() -> list[str]:
    return [spec.name for spec in READ_MODELS]


def open_model(name: str, data_dir: Path) -> ListedReadModel:
    """Open the read model ``name`` in ``data_dir`` (its tables created if new)."""
    return BY_NAME[name].open(data_dir)


def open_as(kind: type[M], name: str, data_dir: Path) -> M:
    """Open the read model ``name``, which must be a ``kind`` (typed for its callers)."""
    model = open_model(name, data_dir)
    if not isinstance(model, kind):
        model.close()
        raise TypeError(f"the read model {name!r} is a {type(model).__name__}, not {kind.__name__}")
    return model


def typed(models: dict[str, ReadModel], name: str, kind: type[M]) -> M:
    """``models[name]`` (from ``open_models``), which must be a ``kind``."""
    model = models[name]
    if not isinstance(model, kind):
        raise TypeError(f"the read model {name!r} is a {type(model).__name__}, not {kind.__name__}")
    return model


def open_models(data_dir: Path) -> dict[str, ReadModel]:
    """Every read model, by name, opened in ``data_dir`` (those opened are closed again if one
    fails to open)."""
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    out: dict[str, ReadModel] = {}
    try:
        for spec in READ_MODELS:
            out[spec.name] = spec.open(data_dir)
    except BaseException:
        for model in out.values():
            model.close()
        raise
    return out
