"""Build small plugin distributions and install them for real, the way a user's pip would.

Packages are installed with ``pip install --target SITE`` and used through ``PYTHONPATH=SITE``,
so the shared virtual environment is never changed and importlib.metadata discovers them
exactly as it discovers a package installed into site-packages.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path

BIN = Path(sys.executable).parent
#: The console script users run.
PRISMER = str(BIN / "prismer")
REPO = Path(__file__).resolve().parents[1]


def write_package(
    root: Path,
    dist: str,
    module_source: str,
    entry_points: Mapping[str, str] | None = None,
    version: str = "0.1.0",
) -> Path:
    """Write a src-layout package ``dist`` (module ``dist`` with '-' -> '_') under ``root``.

    ``entry_points`` maps entry-point names in the ``prismer`` group to modules; by default
    one entry point named after the module's last word points at the module.
    """
    module = dist.replace("-", "_")
    folder = root / dist
    (folder / "src" / module).mkdir(parents=True)
    (folder / "src" / module / "__init__.py").write_text(textwrap.dedent(module_source))
    points = entry_points or {module.rsplit("_", 1)[-1]: module}
    lines = "\n".join(f'{name} = "{target}"' for name, target in points.items())
    (folder / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""\
            [build-system]
            requires = ["setuptools>=69"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{dist}"
            version = "{version}"

            [project.entry-points.prismer]
            """
        )
        + lines
        + "\n"
    )
    return folder


def copy_package(source: Path, root: Path) -> Path:
    """Copy a package folder (without build leftovers), so installing it writes nothing in the repo."""
    target = root / source.name
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"))
    return target


def install(packages: Iterable[Path], site: Path) -> Path:
    """``pip install`` the package folders into ``site`` in one pip run; return ``site``."""
    command = [
        str(BIN / "pip"), "install", "--quiet", "--no-deps", "--no-build-isolation",
        "--disable-pip-version-check", "--no-input", "--target", str(site), *map(str, packages),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"pip install failed:\n{result.stdout}\n{result.stderr}")
    return site


def installed_distributions(site: Path) -> dict[str, str]:
    """What importlib.metadata sees in ``site``: {distribution name: version}."""
    return {d.metadata["Name"]: d.version for d in md.distributions(path=[str(site)])}


def site_entry_points(site: Path) -> list[md.EntryPoint]:
    """The ``prismer`` entry points of the distributions in ``site`` (for load_registry)."""
    return [ep for d in md.distributions(path=[str(site)]) for ep in d.entry_points if ep.group == "prismer"]


def plugin_env(site: Path | None = None, load: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a user who installed ``site``'s packages; ``load`` sets PRISMER_LOAD_PLUGINS."""
    env = {k: v for k, v in os.environ.items() if k != "PRISMER_LOAD_PLUGINS"}
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH", "")]))
    if load is not None:
        env["PRISMER_LOAD_PLUGINS"] = load
    env.update(extra)
    return env


def run_prismer(*args: str, env: Mapping[str, str], check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the ``prismer`` command as a user would; with ``check``, fail showing its stderr."""
    result = subprocess.run([PRISMER, *args], capture_output=True, text=True, env=dict(env), cwd=cwd)
    if check and result.returncode != 0:
        raise AssertionError(f"prismer {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


# A dense expert module: ``expert_module("hello")`` is a working plugin; the keyword
# arguments replace parts of it to make faulty ones.
_EXPERT_MODULE = '''\
import numpy as np
from prismer_core import DenseMap, Expert, ExpertKind, ExpertSpec, hookimpl
{imports}

class {cls}(Expert):
    spec = ExpertSpec(name="{name}", version="{version}", kind=ExpertKind.DENSE, channels=1,
                      description="brightness of each pixel"{spec_extra})

    def predict(self, images, context=None):
        return [{output} for image in images]
{methods}

@hookimpl
def register_experts(register):
    register({cls})
'''

BRIGHTNESS = "DenseMap((image.mean(axis=2, keepdims=True) / 127.5 - 1.0).astype(np.float32))"


def expert_module(
    name: str,
    *,
    version: str = "1.0",
    output: str = BRIGHTNESS,
    spec_extra: str = "",
    imports: str = "",
    methods: str = "",
) -> str:
    """Source of a plugin module registering one dense expert ``name`` (brightness map)."""
    cls = "".join(part.title() for part in name.split("_")) + "Expert"
    return _EXPERT_MODULE.format(
        name=name, version=version, cls=cls, output=output, spec_extra=spec_extra,
        imports=imports, methods=textwrap.indent(textwrap.dedent(methods), "    "),
    )


# -- the test plugins: one of each kind of trouble a third-party package can bring ----------

FAULTY_MODULE = '''\
"""Experts that break the output contract on purpose, on images marked with a magenta
top-left pixel; on every other image they return a valid brightness map."""
import numpy as np
from prismer_core import DenseMap, Expert, ExpertKind, ExpertSpec, hookimpl


class Faulty(Expert):
    def predict(self, images, context=None):
        outputs = []
        for image in images:
            data = (image.mean(axis=2, keepdims=True) / 127.5 - 1.0).astype(np.float32)
            outputs.append(DenseMap(self.spoil(data) if tuple(image[0, 0]) == (255, 0, 255) else data))
        return outputs


def faulty(name, spoil):
    spec = ExpertSpec(name=name, version="1.0", kind=ExpertKind.DENSE, channels=1)
    return type(name, (Faulty,), {"spec": spec, "spoil": lambda self, data: spoil(data)})


def _raise(data):
    raise RuntimeError("cannot handle this picture")


def _nan(data):
    data = data.copy()
    data[0, 0, 0] = np.nan
    return data


EXPERTS = [
    faulty("faulty_raise", _raise),
    faulty("faulty_shape", lambda data: data[:, :-1]),
    faulty("faulty_dtype", lambda data: data.astype(np.float64)),
    faulty("faulty_range", lambda data: data * 3),
    faulty("faulty_nan", _nan),
]


@hookimpl
def register_experts(register):
    for expert in EXPERTS:
        register(expert)
'''

TOY_EMBEDDER_MODULE = '''\
import numpy as np
from prismer_core import hookimpl
from prismer_core.semantic import TextEmbedder


class ToyEmbedder(TextEmbedder):
    """Letter counts: a deterministic stand-in for a text model."""

    name = "toy"

    @property
    def identity(self):
        return "toy-letter-counts-1"

    @property
    def dim(self):
        return 26

    def embed(self, texts):
        out = np.zeros((len(texts), 26), np.float32)
        for row, text in enumerate(texts):
            for char in text.lower():
                if "a" <= char <= "z":
                    out[row, ord(char) - 97] += 1
        return out


@hookimpl
def register_text_embedders(register):
    register(ToyEmbedder)
'''

#: Installed together by the ``plugin_site`` fixture: dist name -> (version, module source, entry points).
TEST_PLUGINS: dict[str, tuple[str, str, dict[str, str] | None]] = {
    "prismer-hello": ("0.3.0", expert_module("hello"), None),
    "prismer-broken": ("1.0.0", 'raise RuntimeError("this plugin is broken on purpose")\n', None),
    "prismer-badspec": ("1.0.0", expert_module("badspec", spec_extra=', vocabulary=("cat",)'), None),
    "prismer-twin-a": ("1.0.0", expert_module("twin"), {"twin": "prismer_twin_a"}),
    "prismer-twin-b": ("2.0.0", expert_module("twin"), {"twin": "prismer_twin_b"}),
    "prismer-future": (
        "1.0.0",
        expert_module(
            "future", spec_extra=", contract_version=99",
            methods='def load(self, device="cpu"):\n    raise RuntimeError("an incompatible expert must never be loaded")\n',
        ),
        None,
    ),
    "prismer-typo": ("1.0.0", expert_module("typo").replace("def register_experts", "def register_expert"), None),
    "prismer-toyembed": ("1.0.0", TOY_EMBEDDER_MODULE, None),
    "prismer-faulty": ("1.0.0", FAULTY_MODULE, None),
}


def build_test_plugins(root: Path) -> list[Path]:
    """Write every package of :data:`TEST_PLUGINS` under ``root``; return their folders."""
    return [
        write_package(root, dist, source, points, version)
        for dist, (version, source, points) in TEST_PLUGINS.items()
    ]


def write_images(folder: Path, count: int, size: tuple[int, int] = (48, 64), marked: Iterable[int] = ()) -> list[Path]:
    """``img000.png``… : a dark picture with a bright square; ``marked`` ones get a magenta
    top-left pixel, which the faulty test experts trip on."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    marked = set(marked)
    paths = []
    for i in range(count):
        image = np.full((*size, 3), 30, np.uint8)
        image[8 : 8 + size[0] // 2, 10 + i % 10 : 30 + i % 10] = (220, 200, 60)
        if i in marked:
            image[0, 0] = (255, 0, 255)
        path = folder / f"img{i:03d}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def run_cli(monkeypatch, *args, site: Path | None = None, load: str | None = None, check: bool = True):
    """Run the ``prismer`` command in this process (see the ``cli`` fixture); usable from
    fixtures of any scope with their own ``pytest.MonkeyPatch``."""
    from typer.testing import CliRunner

    from prismer_cli.main import app
    from prismer_core.registry import LOAD_PLUGINS_ENV, get_registry

    with monkeypatch.context() as patch:
        if site is not None:
            patch.syspath_prepend(str(site))
        if load is None:
            patch.delenv(LOAD_PLUGINS_ENV, raising=False)
        else:
            patch.setenv(LOAD_PLUGINS_ENV, load)
        get_registry.cache_clear()
        try:
            result = CliRunner().invoke(app, [str(a) for a in args])
        finally:
            get_registry.cache_clear()
    if check and result.exit_code != 0:
        raise AssertionError(
            f"prismer {' '.join(map(str, args))} exited {result.exit_code}:\n{result.output}{result.exception!r}"
        )
    return result
