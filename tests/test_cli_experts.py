"""`prismer experts list | info | new` as users run them, with real installed plugin packages.

The commands run in-process (the ``cli`` fixture) with the test plugins on sys.path; the
scaffolded package's own tests run in a subprocess, as its author would run them.
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from plugin_helpers import BIN, install, plugin_env, write_images
from prismer_core.data.label_store import LabelStore

STATES = {"ready", "not ready", "broken", "incompatible", "conflict"}
ROW_TYPES = {
    "name": str, "kind": str, "channels": (int, type(None)), "package": str, "version": str,
    "package_version": str, "plugin": str, "state": str, "reason": str, "status": str, "ready": bool,
}


@pytest.fixture
def prismer(cli, plugin_site, monkeypatch):
    """`prismer ...` with every test plugin installed."""
    monkeypatch.setenv("COLUMNS", "400")  # wide enough that the table wraps nothing
    return lambda *args, check=True: cli(*args, site=plugin_site, check=check)


def test_list_json_has_one_documented_schema_for_every_state(prismer):
    rows = json.loads(prismer("experts", "list", "--json").stdout)
    assert {"ready", "broken", "incompatible", "conflict"} <= {row["state"] for row in rows}
    for row in rows:
        assert set(row) == set(ROW_TYPES), row
        assert all(isinstance(row[key], kind) for key, kind in ROW_TYPES.items()), row
        assert row["state"] in STATES and row["ready"] == (row["state"] == "ready")
        assert row["status"] == (row["state"] if not row["reason"] else f"{row['state']}: {row['reason']}")
    by_name = {row["name"]: row for row in rows}
    assert by_name["saliency"] == {
        "name": "saliency", "kind": "dense", "channels": 1, "package": "prismer-saliency",
        "version": "1.0", "package_version": "1.0.0", "plugin": "saliency",
        "state": "ready", "reason": "", "status": "ready", "ready": True,
    }
    assert by_name["edge"]["package"] == "prismer" and by_name["edge"]["ready"]


def test_list_shows_a_table_for_people(prismer):
    table = prismer("experts", "list").stdout
    lines = {line.split("│")[1].strip(): line for line in table.splitlines() if line.startswith("│")}
    assert "prismer-saliency 1.0.0" in lines["saliency"] and "ready" in lines["saliency"]
    assert "broken: import failed: RuntimeError: this plugin is broken on purpose" in lines["(broken)"]
    assert "conflict: name 'twin' is claimed by both" in lines["twin"]
    assert "incompatible: written for expert contract 99" in lines["future"]


def test_info_shows_what_an_expert_declares_and_its_status(prismer):
    info = prismer("experts", "info", "saliency").stdout
    fields = dict(line.split(None, 1) for line in info.splitlines())
    assert fields["package"] == "prismer-saliency 1.0.0" and fields["kind"] == "dense"
    assert fields["channels"] == "1" and fields["contract_version"] == "1" and fields["status"] == "ready"
    assert "Hou & Zhang" in fields["description"]

    twin = prismer("experts", "info", "twin").stdout
    assert "conflict: name 'twin' is claimed by both prismer-twin-" in twin

    broken = prismer("experts", "info", "broken", check=False)
    assert broken.exit_code == 1 and broken.stderr.startswith("Error: expert 'broken' is unavailable")


def test_unknown_expert_names_get_close_suggestions(prismer, tmp_path):
    info = prismer("experts", "info", "salincy", check=False)
    assert info.exit_code == 1
    assert info.stderr.startswith("Error: unknown expert 'salincy'; did you mean 'saliency'")

    write_images(tmp_path / "images", 1)
    label = prismer("label", tmp_path / "images", "--experts", "saliency,edg", "--out", tmp_path / "store", check=False)
    assert label.exit_code == 1 and "unknown expert 'edg'; did you mean 'edge'" in label.stderr
    assert not (tmp_path / "store").exists()


def test_new_scaffolds_a_package_that_installs_passes_its_tests_and_labels(cli, tmp_path):
    created = cli("experts", "new", "my_depth", "--out", tmp_path / "work")
    package = tmp_path / "work" / "prismer-my-depth"
    assert f"created {package}" in created.stdout
    assert sorted(p.relative_to(package).as_posix() for p in package.rglob("*") if p.is_file()) == [
        "README.md", "pyproject.toml", "src/prismer_my_depth/__init__.py", "tests/test_expert.py",
    ]
    assert '[project.entry-points.prismer]\nmy_depth = "prismer_my_depth"' in (package / "pyproject.toml").read_text()

    site = install([package], tmp_path / "site")
    env = plugin_env(site)
    tests = subprocess.run([str(BIN / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                           cwd=package, env=env, capture_output=True, text=True)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "4 passed" in tests.stdout

    rows = {row["name"]: row for row in json.loads(cli("experts", "list", "--json", site=site).stdout)}
    assert (rows["my_depth"]["package"], rows["my_depth"]["package_version"], rows["my_depth"]["state"]) == (
        "prismer-my-depth", "0.1.0", "ready")

    write_images(tmp_path / "images", 2)
    cli("label", tmp_path / "images", "--experts", "my_depth", "--out", tmp_path / "store", site=site)
    brightness = LabelStore(tmp_path / "store").read_file("my_depth", tmp_path / "images" / "img000.png").data
    assert brightness.shape == (48, 64, 1) and np.isclose(brightness.min(), 30 / 127.5 - 1, atol=1e-2)


def test_new_refuses_a_bad_name_or_an_existing_folder_and_writes_nothing(cli, tmp_path):
    bad = cli("experts", "new", "My-Depth", "--out", tmp_path, check=False)
    assert bad.exit_code == 1 and bad.stderr.startswith("Error: expert name 'My-Depth' must be lower-case")
    assert list(tmp_path.iterdir()) == []

    cli("experts", "new", "depth2", "--out", tmp_path)
    readme = (tmp_path / "prismer-depth2" / "README.md").read_text()
    again = cli("experts", "new", "depth2", "--out", tmp_path, check=False)
    assert again.exit_code == 1 and "already exists" in again.stderr
    assert (tmp_path / "prismer-depth2" / "README.md").read_text() == readme
    assert [p.name for p in tmp_path.iterdir()] == ["prismer-depth2"]  # no staging folder left
