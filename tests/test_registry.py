"""The plugin registry as users meet it: real installed packages, found through entry points.

The packages (tests/plugin_helpers.py TEST_PLUGINS) are pip-installed once per session into a
folder put on PYTHONPATH (subprocesses) or sys.path (the CLI and the Python API in-process).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from plugin_helpers import installed_distributions, plugin_env, run_prismer, site_entry_points, write_images
from prismer_core import hookimpl
from prismer_core.runner import ExpertRunner
from prismer_core.registry import ExpertUnavailableError, Registry, load_registry


def by_name(json_text: str) -> dict[str, dict]:
    return {row["name"]: row for row in json.loads(json_text)}


@pytest.fixture
def rows(cli, plugin_site) -> dict[str, dict]:
    """`prismer experts list --json` with every test plugin installed."""
    return by_name(cli("experts", "list", "--json", site=plugin_site).stdout)


@pytest.fixture
def site_registry(plugin_site, monkeypatch) -> Registry:
    """The registry a Python user gets with the test plugins installed (in-process)."""
    monkeypatch.syspath_prepend(str(plugin_site))
    monkeypatch.delenv("PRISMER_LOAD_PLUGINS", raising=False)
    return load_registry(site_entry_points(plugin_site))


def test_an_installed_distribution_is_discovered_with_its_package_and_version(plugin_site, cli):
    assert installed_distributions(plugin_site)["prismer-hello"] == "0.3.0"  # importlib.metadata sees it
    rows = by_name(run_prismer("experts", "list", "--json", env=plugin_env(plugin_site)).stdout)
    hello = rows["hello"]
    assert (hello["package"], hello["package_version"], hello["plugin"]) == ("prismer-hello", "0.3.0", "hello")
    assert (hello["kind"], hello["channels"], hello["version"], hello["state"], hello["ready"]) == ("dense", 1, "1.0", "ready", True)
    assert "hello" not in by_name(cli("experts", "list", "--json").stdout)  # it comes from the installed package


def test_a_plugin_that_fails_to_import_is_listed_as_broken_and_the_rest_works(plugin_site, rows, cli, tmp_path):
    broken = rows["(broken)"]
    assert broken["state"] == "broken" and broken["package"] == "prismer-broken"
    assert "import failed: RuntimeError: this plugin is broken on purpose" in broken["reason"]
    assert "prismer_broken/__init__.py:1" in broken["reason"]  # where, in the plugin's own code
    assert rows["edge"]["ready"] and rows["hello"]["ready"]

    write_images(tmp_path / "images", 2)
    result = cli("label", tmp_path / "images", "--experts", "edge,hello", "--out", tmp_path / "store", site=plugin_site)
    assert "labelled 2 images" in result.stdout
    assert len(list((tmp_path / "store" / "hello").rglob("*.npz"))) == 2

    refused = cli("label", tmp_path / "images", "--experts", "broken", "--out", tmp_path / "s2", site=plugin_site, check=False)
    assert refused.exit_code == 1
    assert refused.stderr.startswith("Error: expert 'broken' is unavailable: plugin 'broken' (prismer-broken 1.0.0) is broken")


def test_a_bad_spec_or_a_misspelt_hook_makes_the_plugin_broken(rows):
    assert rows["badspec"]["state"] == "broken"
    assert rows["badspec"]["reason"] == "bad spec: expert 'badspec': only semantic experts have a vocabulary or instances"
    typo = rows["(typo)"]
    assert typo["state"] == "broken" and "unknown hook 'register_expert'" in typo["reason"]


def test_two_packages_claiming_one_name_is_a_conflict_naming_both(plugin_site, rows, cli, tmp_path):
    twin = rows["twin"]
    assert twin["state"] == "conflict" and not twin["ready"]
    assert "prismer-twin-a 1.0.0" in twin["reason"] and "prismer-twin-b 2.0.0" in twin["reason"]

    write_images(tmp_path / "images", 1)
    result = cli("label", tmp_path / "images", "--experts", "twin", "--out", tmp_path / "store", site=plugin_site, check=False)
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "prismer-twin-a 1.0.0" in result.stderr and "prismer-twin-b 2.0.0" in result.stderr
    assert not (tmp_path / "store" / "twin").exists()


def test_prismer_load_plugins_restricts_what_is_loaded(plugin_site, cli):
    def names(load: str) -> set[str]:
        return set(by_name(cli("experts", "list", "--json", site=plugin_site, load=load).stdout))

    assert names("hello,edge") == {"hello", "edge"}
    # A distribution name works too; broken plugins that are not asked for are never imported.
    assert names("prismer-saliency") == {"saliency"}
    assert names("") == set()


def test_an_incompatible_contract_version_is_listed_and_never_loaded(plugin_site, rows, cli, site_registry, tmp_path):
    future = rows["future"]
    assert future["state"] == "incompatible"
    assert "written for expert contract 99" in future["reason"]

    with pytest.raises(ExpertUnavailableError, match="incompatible: written for expert contract 99"):
        ExpertRunner(["future"], registry=site_registry)
    with pytest.raises(ExpertUnavailableError, match="incompatible"):
        site_registry.create("future")

    write_images(tmp_path / "images", 1)
    result = cli("label", tmp_path / "images", "--experts", "edge,future", "--out", tmp_path / "store", site=plugin_site, check=False)
    assert result.exit_code == 1 and "incompatible" in result.stderr
    assert "never be loaded" not in result.stderr  # refused before its load() could run


def test_hook_register_experts(site_registry):
    entry = site_registry.entry("hello")
    assert entry.plugin.package == "prismer-hello 0.3.0" and entry.status == "ok"
    expert = site_registry.create("hello")
    image = np.zeros((4, 5, 3), np.uint8)
    image[:, 2:] = 255
    (output,) = expert.predict([image])
    assert output.data[:, :2].max() == -1.0 and output.data[:, 2:].min() == 1.0


def test_hook_register_text_embedders(site_registry):
    entry = site_registry.embedders["toy"]
    assert (entry.plugin.distribution, entry.plugin.version) == ("prismer-toyembed", "1.0.0")
    vectors = entry.cls().embed(["cab", "a"])
    assert vectors.shape == (2, 26) and vectors[0, :3].tolist() == [1, 1, 1] and vectors[1].sum() == 1


def test_a_hook_implementation_may_take_fewer_arguments_than_the_spec():
    """pluggy allows it, so the registry must call it without the arguments it does not take."""

    class Quiet:
        @hookimpl
        def register_experts(self):
            self.called = True

    plugin = Quiet()
    record = Registry().add_plugin(plugin, "quiet")
    assert record.status == "ok" and plugin.called


def test_a_text_embedder_name_cannot_be_taken_over_by_another_package(site_registry):
    class Impostor:
        @hookimpl
        def register_text_embedders(self, register):
            register(type("Impostor", (), {"name": "toy"}))

    record = site_registry.add_plugin(Impostor(), "impostor", "prismer-impostor", "9.9")
    assert record.status == "broken"
    assert record.reason == "text embedder 'toy' is claimed by both prismer-toyembed 1.0.0 and prismer-impostor 9.9"
    assert site_registry.embedders["toy"].plugin.distribution == "prismer-toyembed"


def test_an_expert_whose_dependency_is_not_ready_is_not_ready(monkeypatch):
    """`normal` computes from `depth`: without depth weights it cannot run, and says why."""
    from prismer_core.registry import load_registry

    monkeypatch.delenv("PRISMER_DEPTH_MODEL", raising=False)
    monkeypatch.delenv("PRISMER_WEIGHTS_DIR", raising=False)
    registry = load_registry()
    assert registry.experts["normal"].readiness().ready  # its own check passes
    readiness = registry.readiness("normal")
    assert not readiness.ready
    assert "needs expert 'depth'" in readiness.reason


def test_an_expert_runs_only_on_the_devices_it_declares_and_says_so_once(site_registry, caplog, monkeypatch):
    """`hello` declares the CPU only (the default): asked for a GPU it runs on the CPU, with one
    notice; `edge` declares both, so it gets the device asked for."""
    import logging

    import numpy as np

    import prismer_core.runner

    monkeypatch.setattr(prismer_core.runner, "_SAID", set())  # what earlier tests were told does not count
    runner = ExpertRunner(["hello"], registry=site_registry, device="cuda:1")
    with caplog.at_level(logging.WARNING, logger="prismer"):
        assert runner.device_for("hello") == "cpu"
        assert runner.device_for("hello") == "cpu"
        assert ExpertRunner(["edge"], registry=load_registry(), device="cuda:1").device_for("edge") == "cuda:1"
    notices = [r.getMessage() for r in caplog.records if "runs on cpu" in r.getMessage()]
    assert notices == ["expert 'hello' runs on cpu: it supports cpu, not cuda:1"]
    only_hello = ExpertRunner(["hello"], registry=site_registry, device="cuda")
    (output,) = only_hello([np.zeros((8, 8, 3), np.uint8)], ["black"])["hello"]  # loaded and run on the CPU
    assert output.data.shape == (8, 8, 1)
