"""`prismer experts list | info | new` as users run them, with real installed plugin packages."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from plugin_helpers import BIN, install, plugin_env, run_prismer, write_images
from prismer_core.data.label_store import LabelStore

STATES = {"ready", "not ready", "broken", "incompatible", "conflict"}
ROW_TYPES = {
    "name": str, "kind": str, "channels": (int, type(None)), "package": str, "version": str,
    "package_version": str, "plugin": str, "state": str, "reason": str, "status": str, "ready": bool,
}


@pytest.fixture(scope="module")
def env(plugin_site):
    return plugin_env(plugin_site, COLUMNS="400")  # wide enough that the table wraps nothing


def test_list_json_has_one_documented_schema_for_every_state(env):
    rows = json.loads(run_prismer("experts", "list", "--json", env=env).stdout)
    assert {row["state"] for row in rows} == STATES - {"not ready"}  # all the test plugins bring
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


def test_list_shows_a_table_for_people(env):
    table = run_prismer("experts", "list", env=env).stdout
    lines = {line.split("│")[1].strip(): line for line in table.splitlines() if line.startswith("│")}
    assert "prismer-saliency 1.0.0" in lines["saliency"] and "ready" in lines["saliency"]
    assert "broken: import failed: RuntimeError: this plugin is broken on purpose" in lines["(broken)"]
    assert "conflict: name 'twin' is claimed by both" in lines["twin"]
    assert "incompatible: written for expert contract 99" in lines["future"]


def test_info_shows_what_an_expert_declares_and_its_status(env):
    info = run_prismer("experts", "info", "saliency", env=env).stdout
    fields = dict(line.split(None, 1) for line in info.splitlines())
    assert fields["package"] == "prismer-saliency 1.0.0" and fields["kind"] == "dense"
    assert fields["channels"] == "1" and fields["contract_version"] == "1" and fields["status"] == "ready"
    assert "Hou & Zhang" in fields["description"]

    twin = run_prismer("experts", "info", "twin", env=env).stdout
    assert "conflict: name 'twin' is claimed by both prismer-twin-" in twin

    broken = run_prismer("experts", "info", "broken", env=env, check=False)
    assert broken.returncode == 1 and broken.stderr.startswith("Error: expert 'broken' is unavailable")


def test_unknown_expert_names_get_close_suggestions(env, tmp_path):
    info = run_prismer("experts", "info", "salincy", env=env, check=False)
    assert info.returncode == 1
    assert info.stderr.startswith("Error: unknown expert 'salincy'; did you mean 'saliency'?")

    write_images(tmp_path / "images", 1)
    label = run_prismer("label", str(tmp_path / "images"), "--experts", "saliency,edg", "--out", str(tmp_path / "store"),
                        env=env, check=False)
    assert label.returncode == 1 and "unknown expert 'edg'; did you mean 'edge'?" in label.stderr
    assert not (tmp_path / "store").exists()


def test_new_scaffolds_a_package_that_installs_passes_its_tests_and_labels(tmp_path):
    created = run_prismer("experts", "new", "my_depth", "--out", str(tmp_path / "work"), env=plugin_env())
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
    assert "3 passed" in tests.stdout

    rows = {row["name"]: row for row in json.loads(run_prismer("experts", "list", "--json", env=env).stdout)}
    assert (rows["my_depth"]["package"], rows["my_depth"]["package_version"], rows["my_depth"]["state"]) == (
        "prismer-my-depth", "0.1.0", "ready")

    write_images(tmp_path / "images", 2)
    run_prismer("label", str(tmp_path / "images"), "--experts", "my_depth", "--out", str(tmp_path / "store"), env=env)
    brightness = LabelStore(tmp_path / "store").read("my_depth", "img000.png").data
    assert brightness.shape == (48, 64, 1) and np.isclose(brightness.min(), 30 / 127.5 - 1, atol=1e-2)


def test_new_refuses_a_bad_name_or_an_existing_folder_and_writes_nothing(tmp_path):
    bad = run_prismer("experts", "new", "My-Depth", "--out", str(tmp_path), env=plugin_env(), check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("Error: expert name 'My-Depth' must be lower-case")
    assert list(tmp_path.iterdir()) == []

    run_prismer("experts", "new", "depth2", "--out", str(tmp_path), env=plugin_env())
    readme = (tmp_path / "prismer-depth2" / "README.md").read_text()
    again = run_prismer("experts", "new", "depth2", "--out", str(tmp_path), env=plugin_env(), check=False)
    assert again.returncode == 1 and "already exists" in again.stderr
    assert (tmp_path / "prismer-depth2" / "README.md").read_text() == readme
    assert [p.name for p in tmp_path.iterdir()] == ["prismer-depth2"]  # no staging folder left
