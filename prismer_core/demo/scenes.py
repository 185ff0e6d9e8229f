"""The built-in demo data: deterministic scenes of coloured shapes, with captions and questions.

Each image shows one to four shapes (circle, square, triangle, star) of distinct colours and
kinds, on a 3×2 grid with jitter, at random depths (nearer shapes are drawn later and hide
the ones behind). Circles and squares carry a printed word or number. The scenes are
made so the experts carry real information: the printed words are small and best read by
the OCR expert; shape outlines are what the edge expert sees; positions are named ("on the
left"), so a horizontal flip changes the right answer.

Every image ``i`` comes from ``numpy.random.default_rng([seed, i])``, so the same
``(n, seed, size)`` always gives the same files, and a larger ``n`` only adds images.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..atomic import atomic_path, write_bytes_atomic, write_json_atomic
from ..errors import PrismerError

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 215),
    "yellow": (240, 205, 40),
    "purple": (140, 60, 185),
    "orange": (245, 135, 30),
}
#: Colours dark enough for white text; the others get black text.
DARK = {"red", "green", "blue", "purple"}
SHAPES = ("circle", "square", "triangle", "star")
#: How often a circle or square carries a word. It was 0.6: with that few word questions the
#: demo model never learnt to read in its 1000 steps (docs/benchmarks.md, "`make demo`").
#: Still drawn when it is 1, so the rest of each scene stays as it was.
WORD_CHANCE = 1.0
#: Shapes roomy enough to carry a word.
WORD_SHAPES = ("circle", "square")
WORDS = ("cat", "dog", "sun", "car", "fish", "bird", "boat", "cup", "key", "hat", "pen", "box",
         "12", "42", "77", "90")
#: How a caption names a printed word ("a red circle with the word cat on the left").
WORD_PHRASE = " with the word "
COLUMNS = ("left", "middle", "right")
ROWS = ("top", "bottom")
NUMBERS = ("zero", "one", "two", "three", "four")
SPLITS = (("train", 0.8), ("val", 0.1), ("test", 0.1))


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    column: int
    row: int
    centre: tuple[float, float]
    radius: float
    depth: float  # 0 = nearest
    word: str | None = None

    @property
    def where(self) -> str:
        return {"left": "on the left", "middle": "in the middle", "right": "on the right"}[COLUMNS[self.column]]

    def phrase(self) -> str:
        word = f"{WORD_PHRASE}{self.word}" if self.word else ""
        article = "an" if self.colour[0] in "aeiou" else "a"
        return f"{article} {self.colour} {self.kind}{word} {self.where}"


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]
    background: tuple[tuple[int, int, int], tuple[int, int, int]]

    def caption(self) -> str:
        ordered = sorted(self.shapes, key=lambda s: (s.centre[0], s.centre[1]))
        phrases = [s.phrase() for s in ordered]
        listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        noun = "shape" if len(self.shapes) == 1 else "shapes"
        return f"{NUMBERS[len(self.shapes)]} {noun}: {listed}"

    def questions(self, rng: np.random.Generator) -> list[dict[str, str]]:
        """Question/answer pairs: the count, one question per shape, and each printed word,
        asked for by the shape's kind and by its colour."""
        qa = [{"type": "count", "question": "how many shapes are there?", "answer": NUMBERS[len(self.shapes)]}]
        for shape in sorted(self.shapes, key=lambda s: s.centre[0]):
            kind = ("colour", "position", "shape")[int(rng.integers(3))]
            if kind == "colour":
                qa.append({"type": kind, "question": f"what colour is the {shape.kind}?", "answer": shape.colour})
            elif kind == "position":
                qa.append({"type": kind, "question": f"where is the {shape.colour} {shape.kind}?",
                           "answer": COLUMNS[shape.column]})
            else:
                qa.append({"type": kind, "question": f"which shape is {shape.colour}?", "answer": shape.kind})
            if shape.word:
                qa.append({"type": "word", "question": f"what is written on the {shape.kind}?", "answer": shape.word})
                qa.append({"type": "word", "question": f"what is written on the {shape.colour} shape?", "answer": shape.word})
        return qa


def make_scene(rng: np.random.Generator) -> Scene:
    """Choose shapes, colours, cells, sizes, depths and words."""
    count = int(rng.integers(1, 5))
    kinds = rng.choice(SHAPES, size=count, replace=False)
    colours = rng.choice(list(COLOURS), size=count, replace=False)
    cells = rng.choice(len(COLUMNS) * len(ROWS), size=count, replace=False)
    depths = rng.permutation(count).astype(float) / max(1, count - 1)
    shapes = []
    for kind, colour, cell, depth in zip(kinds, colours, cells, depths):
        column, row = int(cell) % len(COLUMNS), int(cell) // len(COLUMNS)
        word = None
        if kind in WORD_SHAPES and rng.random() < WORD_CHANCE:
            word = str(rng.choice(WORDS))
        radius = float(rng.uniform(0.14, 0.17) if word else rng.uniform(0.10, 0.16))
        x = (column + 0.5) / len(COLUMNS) + rng.uniform(-0.05, 0.05)
        y = (row + 0.5) / len(ROWS) + rng.uniform(-0.06, 0.06)
        centre = (float(np.clip(x, radius, 1 - radius)), float(np.clip(y, radius, 1 - radius)))
        shapes.append(Shape(str(kind), str(colour), column, row, centre, radius, float(depth), word))
    background = tuple(tuple(int(v) for v in rng.integers(175, 235, size=3)) for _ in range(2))
    return Scene(tuple(shapes), background)  # type: ignore[arg-type]


def render(scene: Scene, size: int, rng: np.random.Generator) -> Image.Image:
    """Draw the scene far to near: a near shape (and its word) hides what lies behind it."""
    top, bottom = (np.asarray(c, dtype=np.float32) for c in scene.background)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    canvas = top * (1 - ramp) + bottom * ramp + rng.normal(0.0, 6.0, size=(size, size, 3)).astype(np.float32)
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(8, round(size * 0.12)))
    # worded shapes are drawn last so no other shape covers their word
    for shape in sorted(scene.shapes, key=lambda s: (s.word is not None, -s.depth)):
        cx, cy, r = shape.centre[0] * size, shape.centre[1] * size, shape.radius * size
        fill = COLOURS[shape.colour]
        outline = tuple(max(0, c - 70) for c in fill)
        _DRAW[shape.kind](draw, cx, cy, r, fill, outline)
        if shape.word:
            ink = "white" if shape.colour in DARK else "black"
            draw.text((cx, cy), shape.word, fill=ink, font=font, anchor="mm")
    return image


def _circle(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill, outline) -> None:
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=outline, width=2)


def _square(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill, outline) -> None:
    side = r * 0.9
    draw.rectangle((cx - side, cy - side, cx + side, cy + side), fill=fill, outline=outline, width=2)


def _triangle(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill, outline) -> None:
    points = [(cx + r * np.cos(a), cy + r * np.sin(a)) for a in np.deg2rad([-90, 30, 150])]
    draw.polygon(points, fill=fill, outline=outline, width=2)


def _star(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill, outline) -> None:
    angles = np.deg2rad(np.arange(10) * 36 - 90)
    radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
    points = [(cx + rad * np.cos(a), cy + rad * np.sin(a)) for rad, a in zip(radii, angles)]
    draw.polygon(points, fill=fill, outline=outline, width=2)


_DRAW: dict[str, Callable[..., None]] = {"circle": _circle, "square": _square, "triangle": _triangle, "star": _star}


@dataclass
class DemoSummary:
    out: Path
    images: dict[str, int]
    rows: dict[str, int]

    def manifest(self, split: str) -> Path:
        return self.out / f"{split}.jsonl"


def split_sizes(n: int) -> dict[str, int]:
    """80/10/10 split with at least one image in each split."""
    if n < len(SPLITS):
        raise PrismerError(f"--n must be at least {len(SPLITS)} (one image per split), got {n}")
    val = max(1, round(n * SPLITS[1][1]))
    test = max(1, round(n * SPLITS[2][1]))
    return {"train": n - val - test, "val": val, "test": test}


def generate_demo(out: str | Path, n: int = 500, seed: int = 0, size: int = 192,
                  progress: Callable[[int], None] | None = None) -> DemoSummary:
    """Write ``n`` scenes as PNGs and train/val/test JSONL manifests (captions and QA rows).

    Each manifest mixes caption rows (``image``, ``caption``) and question rows (``image``,
    ``question``, ``answer``, ``type``); ``prismer train --task caption,vqa`` uses both.
    """
    if size < 64:
        raise PrismerError(f"--size must be at least 64 pixels for the printed words to be legible, got {size}")
    out = Path(out)
    sizes = split_sizes(n)
    summary = DemoSummary(out, dict(sizes), {})
    index = 0
    for split, count in sizes.items():
        lines: list[str] = []
        for _ in range(count):
            rng = np.random.default_rng([seed, index])
            scene = make_scene(rng)
            image = render(scene, size, rng)
            relative = f"images/{split}/{index:05d}.png"
            with atomic_path(out / relative) as tmp:
                image.save(tmp, format="PNG")
            lines.append(json.dumps({"image": relative, "caption": scene.caption()}))
            lines.extend(json.dumps({"image": relative, **qa}) for qa in scene.questions(rng))
            index += 1
            if progress:
                progress(1)
        write_bytes_atomic(out / f"{split}.jsonl", ("\n".join(lines) + "\n").encode())
        summary.rows[split] = len(lines)
    write_json_atomic(out / "demo.json", {"n": n, "seed": seed, "size": size, "images": sizes, "rows": summary.rows})
    return summary
