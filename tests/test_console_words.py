"""Every word a console page asks for is in ``hub/console/i18n.yaml`` in Chinese and English,
those built from a value (a job's state, an identity decision, a count) for every value."""

from __future__ import annotations

import re
from importlib import resources

import yaml

from hub.console.audit import FINDINGS
from hub.console.common import MENU
from hub.console.connectors import COUNTS
from projections.intake import BY
from projections.person import HISTORY_EVENTS

WORDS = yaml.safe_load(resources.files("hub.console").joinpath("i18n.yaml").read_text("utf-8"))
FAMILIES = {"job_": ("running", "finished", "failed", "interrupted"), "event_": HISTORY_EVENTS,
            "count_": COUNTS, "by_": tuple(BY), "finding_": FINDINGS,
            "q_": ("institution", "rule", "document_type"),
            "per_": ("institution", "rule", "document_type"),
            "cda_": ("patient", "date", "author", "custodian"), "": tuple(n for n, _ in MENU)}


def test_every_word_asked_for_is_there_in_both_languages():
    templates = resources.files("hub.console").joinpath("templates")
    asked = set()
    for page in templates.iterdir():
        asked |= set(re.findall(r"\bt\('([A-Za-z0-9_]+)'\)", page.read_text("utf-8")))
    for module in resources.files("hub.console").iterdir():
        if module.name.endswith(".py"):
            asked |= set(re.findall(r"say\(request, [\"']([a-z_]+)[\"']\)",
                                    module.read_text("utf-8")))
    asked |= {prefix + value for prefix, values in FAMILIES.items() for value in values}
    missing = sorted(k for k in asked if k not in WORDS)
    assert not missing
    for key, said in WORDS.items():
        assert said.get("zh") and said.get("en"), key
