"""The demo generator's options (a differently drawn set) and the demo's benchmark summaries
(mean ± std over seeds, what the noise expert costs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from prismer_core.demo.scenes import PALETTE, SceneOptions, generate_demo, scene_of
from prismer_core.errors import PrismerError
from prismer_core.demo.run import NOISE_RUN, RUNS, DemoReport, noise_cost, seed_statistics, seeds_table

OTHER = dict(shapes=("hexagon", "diamond", "cross", "pentagon", "circle"), colours=("pink", "cyan", "brown", "black", "teal"),
             words=("sky", "owl", "jam", "7"), word_shapes=("hexagon", "circle"), background="checker",
             radius=(0.08, 0.12), word_radius=(0.12, 0.14), max_shapes=3)


def rows(folder: Path, split: str = "train") -> list[dict]:
    return [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().splitlines()]


def test_a_differently_drawn_set_uses_only_what_its_options_name(tmp_path):
    options = SceneOptions(**OTHER)
    generate_demo(tmp_path, n=30, seed=2, size=96, options=options)
    record = json.loads((tmp_path / "demo.json").read_text())
    assert SceneOptions.from_dict(record["options"]) == options
    answers: dict[str, set] = {}
    for row in rows(tmp_path):
        if "type" in row:
            answers.setdefault(row["type"], set()).add(row["answer"])
    assert answers["shape"] <= set(OTHER["shapes"]) and answers["colour"] <= set(OTHER["colours"])
    assert answers["word"] <= set(OTHER["words"]) and answers["count"] <= {"one", "two", "three"}
    assert Image.open(tmp_path / "images" / "train" / "00000.png").size == (96, 96)


def test_scene_of_draws_each_image_again_from_the_recorded_seed_and_options(tmp_path):
    generate_demo(tmp_path, n=12, seed=5, size=64, options=SceneOptions(**OTHER))
    for row in rows(tmp_path):
        if "caption" in row:
            scene = scene_of(tmp_path, row["image"])
            assert scene.caption() == row["caption"]
            assert all(shape.colour in OTHER["colours"] and PALETTE[shape.colour] for shape in scene.shapes)


def test_the_default_options_leave_the_demo_set_as_it_was(tmp_path):
    generate_demo(tmp_path / "a", n=6, seed=1, size=64)
    generate_demo(tmp_path / "b", n=6, seed=1, size=64, options=SceneOptions())
    assert "options" not in json.loads((tmp_path / "a" / "demo.json").read_text())
    for a in sorted((tmp_path / "a").rglob("*.png")):
        assert a.read_bytes() == (tmp_path / "b" / a.relative_to(tmp_path / "a")).read_bytes()


@pytest.mark.parametrize(
    ("options", "message"),
    [(dict(shapes=("circle", "blob")), "unknown or repeated shapes blob (known: circle, square"),
     (dict(colours=("red", "red", "blue")), "unknown or repeated colours"),
     (dict(background="plaid"), "background must be one of gradient, dark, stripes, checker"),
     (dict(shapes=("circle", "square"), max_shapes=3), "max shapes must lie in 1..2"),
     (dict(radius=(0.2, 0.1)), "radius must satisfy"),
     (dict(words=("two words",)), "single words")],
)
def test_bad_options_say_what_is_wrong(options, message):
    with pytest.raises(PrismerError, match=message.replace("(", r"\(").replace(".", r"\.")):
        SceneOptions(**options)


def test_data_cli_draws_a_set_with_other_shapes_colours_and_background(cli, tmp_path):
    out = tmp_path / "other"
    cli("data", "demo", "--out", out, "--n", "10", "--size", "80", "--shapes", "hexagon,cross,circle",
        "--colours", "pink,teal,black", "--words", "sky,owl", "--word-shapes", "hexagon", "--background", "stripes",
        "--radius", "0.08,0.12", "--max-shapes", "2")
    options = json.loads((out / "demo.json").read_text())["options"]
    assert options["shapes"] == ["hexagon", "cross", "circle"] and options["background"] == "stripes"
    assert options["radius"] == [0.08, 0.12] and options["max_shapes"] == 2
    bad = cli("data", "demo", "--out", tmp_path / "bad", "--radius", "0.1", check=False)
    assert bad.exit_code != 0 and "--radius '0.1': write two numbers" in bad.output


def report_with(values: dict[tuple[str, int], dict[str, float]]) -> DemoReport:
    """A finished demo's report (no training): run label and seed -> evaluation metrics."""
    report = DemoReport(Path("demo_out"))
    for (label, seed), metrics in values.items():
        name = f"{label}-{seed}"
        report.runs[name] = None  # type: ignore[assignment]
        report.labels[name] = (label, seed)
        report.evaluation[f"{label}, seed {seed}"] = metrics
    return report


def test_seed_summary_gives_mean_and_spread_and_the_noise_cost():
    clean, noisy, rgb = RUNS[0].label, NOISE_RUN.label, RUNS[1].label

    def metrics(overall, colour):
        return {"VQA accuracy": overall, "VQA accuracy (colour)": colour, "CIDEr": 1.0}

    report = report_with({(clean, 0): metrics(0.90, 0.9), (clean, 1): metrics(0.94, 1.0), (noisy, 0): metrics(0.89, 0.9),
                          (noisy, 1): metrics(0.93, 1.0), (rgb, 0): metrics(0.60, 0.9), (rgb, 1): metrics(0.60, 0.9)})
    stats = seed_statistics(report)
    mean, spread, seeds = stats[clean]["VQA accuracy"]
    assert (round(mean, 6), round(spread, 6), seeds) == (0.92, round(0.04 / 2**0.5, 6), 2)
    assert stats[rgb]["VQA accuracy"][1] == 0.0
    assert noise_cost(report).endswith("it costs +1.0 points (mean of 2 seeds)")
    table = seeds_table(report)
    assert [c.header for c in table.columns] == ["run", "VQA", "colour", "CIDEr"]
    assert list(table.columns[1].cells) == ["0.920 ± 0.028", "0.910 ± 0.028", "0.600 ± 0.000"]
