"""Fixtures shared by the test modules. Installing packages costs seconds, so it is done once."""

from __future__ import annotations

from pathlib import Path

import pytest

from plugin_helpers import REPO, build_test_plugins, copy_package, install, run_cli

EXAMPLE_PLUGIN = REPO / "plugins" / "prismer-saliency"


def pytest_addoption(parser) -> None:
    parser.addoption(
        "--accelerator", default="cuda",
        help="the device of the tests marked cuda (tests/test_cuda.py); cpu runs them without a GPU, as "
             "bench/gpu_check.sh --dry-run does",
    )


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    """A folder with the example plugin and every test plugin pip-installed into it.

    Use it with ``plugin_env(plugin_site)`` (subprocesses) or ``cli(..., site=plugin_site)``;
    see tests/plugin_helpers.py for what each test plugin does (a working one, a broken one,
    a conflicting pair, faulty outputs, ...).
    """
    sources = tmp_path_factory.mktemp("plugin-sources")
    packages = [copy_package(EXAMPLE_PLUGIN, sources), *build_test_plugins(sources)]
    return install(packages, tmp_path_factory.mktemp("site"))


@pytest.fixture
def cli(monkeypatch):
    """``cli("experts", "list", site=SITE, load="a,b")``: run the ``prismer`` command in this
    process (no interpreter start-up), as if the packages in SITE were installed and
    PRISMER_LOAD_PLUGINS were ``load`` (unset when None). Returns typer's Result
    (``exit_code``, ``stdout``, ``stderr``); with ``check``, a non-zero exit fails the test.
    """

    def run(*args, site: Path | None = None, load: str | None = None, check: bool = True):
        return run_cli(monkeypatch, *args, site=site, load=load, check=check)

    return run


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one thread than on two fighting for a busy machine
    (``pytestmark = pytest.mark.usefixtures("one_thread")`` in a module that wants it)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """The small model of tests/inference_helpers.py, trained once per session."""
    from inference_helpers import trained_demo

    return trained_demo(tmp_path_factory.getbasetemp() / "inference-model")


@pytest.fixture(scope="session")
def retrieval_model(tmp_path_factory):
    """A PrismerZ model of tests/inference_helpers.py trained with both passes, once per session.
    At the shared model's 3e-3 the random-init vision tower collapses within a few steps (every
    image gives the same tokens; the generative loss still falls, on the language prior), and
    nothing can be retrieved; at 5e-4 a caption found its image among 5 of 32 in 0.94 of cases."""
    from inference_helpers import trained_demo

    return trained_demo(tmp_path_factory.getbasetemp() / "retrieval-model", steps=60, experts=[], contrastive=True,
                        batch_size=16, lr=5e-4)
