"""Fixtures shared by the test modules. Installing packages costs seconds, so it is done once."""

from __future__ import annotations

from pathlib import Path

import pytest

from plugin_helpers import REPO, build_test_plugins, copy_package, install

EXAMPLE_PLUGIN = REPO / "plugins" / "prismer-saliency"


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    """A folder with the example plugin and every test plugin pip-installed into it.

    Use it with ``plugin_env(plugin_site)``; see tests/plugin_helpers.py for what each test
    plugin does (a working one, a broken one, a conflicting pair, faulty outputs, ...).
    """
    sources = tmp_path_factory.mktemp("plugin-sources")
    packages = [copy_package(EXAMPLE_PLUGIN, sources), *build_test_plugins(sources)]
    return install(packages, tmp_path_factory.mktemp("site"))
