"""Every hook is documented in docs/plugins.md with its signature, and has a test of its own.

Like datasette's test_plugin_hooks_have_tests: adding a hook to prismer_core/hookspecs.py
without documenting and testing it fails here.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from prismer_core import hookspecs

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "plugins.md"
SPEC_MARK = f"{hookspecs.PROJECT}_spec"  # the attribute pluggy's HookspecMarker sets


def hook_signatures() -> dict[str, str]:
    """``{hook name: 'name(arg, ...)'}`` for every hook specification."""
    return {
        name: f"{name}({', '.join(inspect.signature(function).parameters)})"
        for name, function in vars(hookspecs).items()
        if callable(function) and hasattr(function, SPEC_MARK)
    }


def documented_hooks() -> dict[str, str]:
    """``{name: 'name(args)'}`` from the '### `name(args)`' headings of the hook reference."""
    reference = GUIDE.read_text().split("## Hook reference", 1)[1].split("\n## ", 1)[0]
    return {m["name"]: m["signature"] for m in re.finditer(r"(?m)^### `(?P<signature>(?P<name>\w+)\([^)]*\))`", reference)}


def test_there_are_hooks_to_check():
    assert {"register_experts", "register_text_embedders"} <= set(hook_signatures())


@pytest.mark.parametrize("hook", sorted(hook_signatures()))
def test_hook_is_documented_with_its_signature(hook):
    assert documented_hooks().get(hook) == hook_signatures()[hook], (
        f"docs/plugins.md needs a '### `{hook_signatures()[hook]}`' heading under '## Hook reference'"
    )


def test_every_documented_hook_exists():
    assert set(documented_hooks()) <= set(hook_signatures())


@pytest.mark.parametrize("hook", sorted(hook_signatures()))
def test_hook_has_a_test(hook):
    sources = "\n".join(path.read_text() for path in (ROOT / "tests").glob("test_*.py"))
    assert re.search(rf"(?m)^def test_hook_{hook}\b", sources), f"add a test named test_hook_{hook}"
