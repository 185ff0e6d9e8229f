"""Everything a user can type is documented: every command and option (docs/cli.md, made
from the commands themselves), and every setting of every expert (docs/experts.md for the
built-ins, the plugin's README for the saliency example). Like datasette's documentation tests.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from prismer_cli.reference import commands, markdown
from prismer_core.experts.contract import ConfigurableExpert
from prismer_core.registry import load_registry

ROOT = Path(__file__).resolve().parents[1]
#: Where each expert's settings are documented: the built-ins in one guide, a plugin in its README.
SETTINGS_DOCS = {"prismer": ROOT / "docs" / "experts.md", "prismer-saliency": ROOT / "plugins" / "prismer-saliency" / "README.md"}


def test_the_command_reference_is_up_to_date():
    written = (ROOT / "docs" / "cli.md").read_text()
    assert written == markdown(), "docs/cli.md is out of date: run python -m prismer_cli.reference > docs/cli.md"


@pytest.mark.parametrize("name", sorted(commands()))
def test_every_command_and_option_says_what_it_does(name):
    command = commands()[name]
    assert (command.help or "").strip(), f"`{name}` has no help text"
    for param in command.params:
        if param.name != "help":
            assert (getattr(param, "help", "") or "").strip(), f"`{name}`: {param.opts or param.name} has no help text"
    assert f"## `{name}`" in markdown()


def expert_settings() -> list[tuple[str, str, str]]:
    """(distribution, expert, setting) for every installed expert with options."""
    registry = load_registry()
    found = []
    for name, entry in sorted(registry.experts.items()):
        if entry.cls is not None and issubclass(entry.cls, ConfigurableExpert):
            found += [(entry.plugin.distribution, name, key) for key in entry.cls.Options.model_fields]
    return found


def test_there_are_settings_to_check():
    experts = {expert for _, expert, _ in expert_settings()}
    assert {"depth", "normal", "edge", "seg", "objdet", "ocr", "saliency"} <= experts


@pytest.mark.parametrize("distribution, expert, key", expert_settings(), ids=lambda v: str(v))
def test_every_expert_setting_is_documented(distribution, expert, key):
    guide = SETTINGS_DOCS[distribution].read_text()
    if distribution == "prismer":  # the expert's own section, in its table of settings
        guide = guide.split(f"## `{expert}`", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in guide.splitlines() if line.lstrip().startswith(("|", "- "))]
    assert any(re.search(rf"`{key}`", row) for row in rows), f"{SETTINGS_DOCS[distribution].name}: document {expert}.{key}"
