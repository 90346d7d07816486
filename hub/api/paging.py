"""Page sizes and links shared by history and search bundles."""

from __future__ import annotations

from urllib.parse import urlencode

from hub.core.config import Settings
from hub.core.errors import bad_request


def page_size(params: dict[str, str], settings: Settings) -> int:
    raw = params.get("_count")
    if raw is None:
        return settings.default_count
    if not (raw.isascii() and raw.isdigit()):
        raise bad_request(f"_count={raw!r} is not a non-negative integer")
    return min(int(raw), settings.max_count)


def link(base_path: str, params: list[tuple[str, str]], **override: str) -> str:
    kept = [(k, v) for k, v in params if k not in override]
    kept += [(k, v) for k, v in override.items() if v is not None]
    return base_path + ("?" + urlencode(kept) if kept else "")
