"""Expert settings: --set NAME.KEY=VALUE over PRISMER_<NAME>_<KEY>, typed and checked."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from prismer_core.data.label_store import LabelStore
from prismer_core.experts.settings import ExpertOptions, SettingError, merged_settings, parse_assignments, parse_options


class Options(ExpertOptions):
    model: str | None = None
    threshold: float = 0.5
    steps: int = 1
    half: bool = True


def test_explicit_settings_win_over_the_environment():
    environ = {"PRISMER_DEPTH_MODEL": "/env/dpt", "PRISMER_DEPTH_STEPS": "3", "PRISMER_DEPTHX_MODEL": "other"}
    assert merged_settings("depth", {"model": "/cli/dpt"}, environ) == {"model": "/cli/dpt", "steps": "3"}


def test_options_are_typed_from_strings():
    options = parse_options(Options, {"model": "/w", "threshold": "0.25", "steps": "4", "half": "no"}, "depth")
    assert options == Options(model="/w", threshold=0.25, steps=4, half=False)
    assert parse_options(Options, {"model": "none", "threshold": 1}, "depth") == Options(model=None, threshold=1.0)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"modle": "/w"}, "expert 'depth' has no setting 'modle' (from --set depth.modle=… or PRISMER_DEPTH_MODLE); did you mean 'model'?"),
        ({"steps": "two"}, "setting 'steps' must be an integer, got 'two'"),
        ({"half": "maybe"}, "setting 'half' must be true or false"),
    ],
)
def test_bad_settings_name_the_expert_and_key(settings, message):
    with pytest.raises(SettingError) as error:
        parse_options(Options, settings, "depth")
    assert message in str(error.value)


def test_assignments_parse_and_typos_are_caught():
    assert parse_assignments(["depth.model=/a=b", "seg.backend = sam"], ["depth", "seg"]) == {
        "depth": {"model": "/a=b"}, "seg": {"backend": "sam"},
    }
    with pytest.raises(SettingError, match="write NAME.KEY=VALUE"):
        parse_assignments(["depth=/w"])
    with pytest.raises(SettingError, match="'dept' is not one of the experts being run .*did you mean 'depth'"):
        parse_assignments(["dept.model=/w"], ["depth", "normal"])


def test_label_cli_passes_set_and_environment_to_the_expert(tmp_path, cli, monkeypatch):
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    image[:, 20:] = 60  # a faint edge: found only with thresholds below the defaults (100, 200)
    Image.fromarray(image).save(tmp_path / "faint.png")
    monkeypatch.setenv("PRISMER_EDGE_LOW", "20")
    monkeypatch.setenv("PRISMER_EDGE_HIGH", "50")

    def label(out: str, *extra: str, check: bool = True):
        return cli("label", tmp_path / "faint.png", "--experts", "edge", "--out", tmp_path / out, *extra,
                   load="edge", check=check)

    label("from-env")
    assert LabelStore(tmp_path / "from-env").read_file("edge", tmp_path / "faint.png").data.max() == 1.0
    label("from-set", "--set", "edge.low=100", "--set", "edge.high=200")
    assert LabelStore(tmp_path / "from-set").read_file("edge", tmp_path / "faint.png").data.max() == -1.0  # --set wins

    bad = label("bad", "--set", "edge.hgh=50", check=False)
    assert bad.exit_code == 1 and bad.stderr.startswith("Error: ") and len(bad.stderr.splitlines()) == 1
    assert "expert 'edge' has no setting 'hgh'" in bad.stderr and "did you mean 'high'" in bad.stderr
    assert not (tmp_path / "bad" / "edge").exists()


def test_every_expert_gets_environment_settings_not_only_builtins(monkeypatch):
    """A third-party expert subclassing the bare contract sees PRISMER_<NAME>_<KEY> too."""
    from prismer_core import DenseMap, Expert, ExpertKind, ExpertSpec

    class Thirdparty(Expert):
        spec = ExpertSpec(name="thirdparty", version="0.1", kind=ExpertKind.DENSE)

        def predict(self, images, context=None):
            return [DenseMap(None) for _ in images]

    monkeypatch.setenv("PRISMER_THIRDPARTY_SIZE", "32")
    monkeypatch.setenv("PRISMER_THIRDPARTY_MODE", "fast")
    assert Thirdparty().settings == {"size": "32", "mode": "fast"}
    assert Thirdparty(mode="slow").settings == {"size": "32", "mode": "slow"}
