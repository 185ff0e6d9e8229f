"""The built-in demo data: deterministic scenes of coloured shapes, with captions and questions.

Each image shows one to four shapes (circle, square, triangle, star) of distinct colours and
kinds, on a 3×2 grid with jitter, at random depths (nearer shapes are drawn later and hide
the ones behind). Circles and squares carry a printed word or number. The scenes are
made so the experts carry real information: the printed words are small and best read by
the OCR expert; shape outlines are what the edge expert sees; positions are named ("on the
left"), so a horizontal flip changes the right answer.

Every image ``i`` comes from ``numpy.random.default_rng([seed, i])``, so the same
``(n, seed, size)`` always gives the same files, and a larger ``n`` only adds images.

What is drawn is a :class:`SceneOptions`: the shapes, colours, words, sizes and background
can all be changed (``prismer data demo --shapes hexagon,diamond --colours pink,teal …``) to
make a differently drawn set on which to check that training defaults learn data they were
not tuned on. The defaults give exactly the files they gave before the options existed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..atomic import atomic_path, write_bytes_atomic, write_json_atomic
from ..errors import PrismerError

#: Named colours a scene may use (``--colours`` picks among them).
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 215),
    "yellow": (240, 205, 40),
    "purple": (140, 60, 185),
    "orange": (245, 135, 30),
    "pink": (240, 120, 180),
    "cyan": (40, 200, 220),
    "brown": (125, 75, 35),
    "grey": (128, 128, 128),
    "black": (25, 25, 25),
    "white": (248, 248, 248),
    "teal": (20, 125, 125),
    "lime": (160, 225, 40),
}
#: The default colours, in the order they are drawn from.
COLOURS: dict[str, tuple[int, int, int]] = {name: PALETTE[name] for name in ("red", "green", "blue", "yellow", "purple", "orange")}
#: Colours dark enough for white text; the others get black text.
DARK = {name for name, (r, g, b) in PALETTE.items() if 0.299 * r + 0.587 * g + 0.114 * b < 150}
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
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six")
#: Backgrounds: a vertical ramp between two light colours (the default), the same between two
#: dark ones, diagonal stripes of two light colours, or a checkerboard of them.
BACKGROUNDS = ("gradient", "dark", "stripes", "checker")


@dataclass(frozen=True)
class SceneOptions:
    """What the scenes are made of; the defaults are the built-in demo set."""

    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = tuple(COLOURS)
    words: tuple[str, ...] = WORDS
    word_shapes: tuple[str, ...] = WORD_SHAPES
    background: str = "gradient"
    #: Radius of a shape as a share of the image side: plain shapes, and shapes with a word.
    radius: tuple[float, float] = (0.10, 0.16)
    word_radius: tuple[float, float] = (0.14, 0.17)
    max_shapes: int = 4
    columns: tuple[str, ...] = field(default=COLUMNS, init=False)
    rows: tuple[str, ...] = field(default=ROWS, init=False)

    def __post_init__(self) -> None:
        problems = []
        for what, chosen, known in (("shape", self.shapes, tuple(_DRAW)), ("colour", self.colours, tuple(PALETTE)),
                                    ("word shape", self.word_shapes, tuple(_DRAW))):
            unknown = [c for c in chosen if c not in known]
            if unknown or len(set(chosen)) != len(chosen):
                problems.append(f"unknown or repeated {what}s {', '.join(unknown) or ', '.join(chosen)} "
                                f"(known: {', '.join(known)})")
        if self.background not in BACKGROUNDS:
            problems.append(f"background must be one of {', '.join(BACKGROUNDS)}, got {self.background!r}")
        if not self.words or any(not w.strip() or " " in w for w in self.words):
            problems.append("words must be a non-empty list of single words")
        cells = len(self.columns) * len(self.rows)
        if not problems and not 1 <= self.max_shapes <= min(len(self.shapes), len(self.colours), cells, len(NUMBERS) - 1):
            problems.append(f"max shapes must lie in 1..{min(len(self.shapes), len(self.colours), cells, len(NUMBERS) - 1)} "
                            f"(one of each shape and colour, one per cell), got {self.max_shapes}")
        for name in ("radius", "word_radius"):
            low, high = getattr(self, name)
            if not 0.03 <= low <= high <= 0.2:
                problems.append(f"{name.replace('_', ' ')} must satisfy 0.03 <= min <= max <= 0.2 (share of the image side), got {low}, {high}")
        if problems:
            raise PrismerError("demo scene options: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if k not in ("columns", "rows")}

    @classmethod
    def from_dict(cls, data: dict) -> "SceneOptions":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


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
    style: str = "gradient"  # one of BACKGROUNDS

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


def make_scene(rng: np.random.Generator, options: SceneOptions | None = None) -> Scene:
    """Choose shapes, colours, cells, sizes, depths and words."""
    options = options or SceneOptions()
    count = int(rng.integers(1, options.max_shapes + 1))
    kinds = rng.choice(options.shapes, size=count, replace=False)
    colours = rng.choice(list(options.colours), size=count, replace=False)
    cells = rng.choice(len(options.columns) * len(options.rows), size=count, replace=False)
    depths = rng.permutation(count).astype(float) / max(1, count - 1)
    shapes = []
    for kind, colour, cell, depth in zip(kinds, colours, cells, depths):
        column, row = int(cell) % len(options.columns), int(cell) // len(options.columns)
        word = None
        if kind in options.word_shapes and rng.random() < WORD_CHANCE:
            word = str(rng.choice(options.words))
        radius = float(rng.uniform(*options.word_radius) if word else rng.uniform(*options.radius))
        x = (column + 0.5) / len(options.columns) + rng.uniform(-0.05, 0.05)
        y = (row + 0.5) / len(options.rows) + rng.uniform(-0.06, 0.06)
        centre = (float(np.clip(x, radius, 1 - radius)), float(np.clip(y, radius, 1 - radius)))
        shapes.append(Shape(str(kind), str(colour), column, row, centre, radius, float(depth), word))
    low, high = (20, 80) if options.background == "dark" else (175, 235)
    background = tuple(tuple(int(v) for v in rng.integers(low, high, size=3)) for _ in range(2))
    return Scene(tuple(shapes), background, options.background)  # type: ignore[arg-type]


def render(scene: Scene, size: int, rng: np.random.Generator) -> Image.Image:
    """Draw the scene far to near: a near shape (and its word) hides what lies behind it."""
    image = Image.fromarray(_background(scene, size, rng))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(8, round(size * 0.12)))
    # worded shapes are drawn last so no other shape covers their word
    for shape in sorted(scene.shapes, key=lambda s: (s.word is not None, -s.depth)):
        cx, cy, r = shape.centre[0] * size, shape.centre[1] * size, shape.radius * size
        fill = PALETTE[shape.colour]
        outline = tuple(max(0, c - 70) for c in fill) if sum(fill) > 150 else tuple(c + 90 for c in fill)
        _DRAW[shape.kind](draw, cx, cy, r, fill, outline)
        if shape.word:
            ink = "white" if shape.colour in DARK else "black"
            draw.text((cx, cy), shape.word, fill=ink, font=font, anchor="mm")
    return image


def _background(scene: Scene, size: int, rng: np.random.Generator) -> np.ndarray:
    """The background as H×W×3 uint8: two colours ramped, striped or checkered, plus noise."""
    first, second = (np.asarray(c, dtype=np.float32) for c in scene.background)
    if scene.style in ("gradient", "dark"):
        ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    else:
        ys, xs = np.mgrid[0:size, 0:size]
        period = max(4, size // 8)
        if scene.style == "stripes":
            ramp = (((xs + ys) // period) % 2).astype(np.float32)[..., None]
        else:
            ramp = (((xs // period) + (ys // period)) % 2).astype(np.float32)[..., None]
    canvas = first * (1 - ramp) + second * ramp + rng.normal(0.0, 6.0, size=(size, size, 3)).astype(np.float32)
    return np.clip(canvas, 0, 255).astype(np.uint8)


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


def _regular(corners: int, turn: float = -90.0) -> Callable[..., None]:
    """A regular polygon with ``corners`` corners, the first at angle ``turn`` (degrees)."""

    def draw_polygon(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill, outline) -> None:
        angles = np.deg2rad(turn + np.arange(corners) * 360.0 / corners)
        draw.polygon([(cx + r * np.cos(a), cy + r * np.sin(a)) for a in angles], fill=fill, outline=outline, width=2)

    return draw_polygon


def _cross(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill, outline) -> None:
    arm = r * 0.38
    points = [(-arm, -r), (arm, -r), (arm, -arm), (r, -arm), (r, arm), (arm, arm), (arm, r), (-arm, r),
              (-arm, arm), (-r, arm), (-r, -arm), (-arm, -arm)]
    draw.polygon([(cx + x, cy + y) for x, y in points], fill=fill, outline=outline, width=2)


_DRAW: dict[str, Callable[..., None]] = {
    "circle": _circle, "square": _square, "triangle": _triangle, "star": _star,
    "pentagon": _regular(5), "hexagon": _regular(6, 0.0), "diamond": _regular(4), "cross": _cross,
}


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
                  progress: Callable[[int], None] | None = None, options: SceneOptions | None = None) -> DemoSummary:
    """Write ``n`` scenes as PNGs and train/val/test JSONL manifests (captions and QA rows).

    Each manifest mixes caption rows (``image``, ``caption``) and question rows (``image``,
    ``question``, ``answer``, ``type``); ``prismer train --task caption,vqa`` uses both.
    ``options``: what the scenes are made of (default: the built-in demo set); they are
    recorded in ``demo.json`` beside the seed, so every scene can be drawn again.
    """
    if size < 64:
        raise PrismerError(f"--size must be at least 64 pixels for the printed words to be legible, got {size}")
    options = options or SceneOptions()
    out = Path(out)
    sizes = split_sizes(n)
    summary = DemoSummary(out, dict(sizes), {})
    index = 0
    for split, count in sizes.items():
        lines: list[str] = []
        for _ in range(count):
            rng = np.random.default_rng([seed, index])
            scene = make_scene(rng, options)
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
    record = {"n": n, "seed": seed, "size": size, "images": sizes, "rows": summary.rows}
    if options != SceneOptions():
        record["options"] = options.to_dict()
    write_json_atomic(out / "demo.json", record)
    return summary


def scene_of(demo_folder: str | Path, image: str) -> Scene:
    """The scene behind one image of a generated set (``images/<split>/<index>.png``), drawn
    again from the seed and options its ``demo.json`` records: the truth about what it shows."""
    record = json.loads((Path(demo_folder) / "demo.json").read_text())
    options = SceneOptions.from_dict(record.get("options", {}))
    index = int(Path(image).stem)
    return make_scene(np.random.default_rng([record["seed"], index]), options)


def scene_options(*, shapes: str | None = None, colours: str | None = None, words: str | None = None,
                  word_shapes: str | None = None, background: str = "gradient", radius: str | None = None,
                  word_radius: str | None = None, max_shapes: int = 4) -> SceneOptions:
    """Scene options as a command line writes them: comma-separated lists, ``MIN,MAX`` ranges,
    None for an option's default."""
    given = {"shapes": parse_list(shapes), "colours": parse_list(colours), "words": parse_list(words),
             "word_shapes": parse_list(word_shapes), "radius": parse_range(radius, "--radius"),
             "word_radius": parse_range(word_radius, "--word-radius")}
    return SceneOptions(background=background, max_shapes=max_shapes, **{k: v for k, v in given.items() if v is not None})


def parse_list(text: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``"a,b, c"`` -> ``("a", "b", "c")``; None stays None (the option's default)."""
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    return tuple(item.strip() for item in items if item.strip())


def parse_range(text: str | None, what: str) -> tuple[float, float] | None:
    """``"0.08,0.12"`` -> ``(0.08, 0.12)``; None stays None."""
    if text is None:
        return None
    parts = parse_list(text) or ()
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise PrismerError(f"{what} {text!r}: write two numbers, MIN,MAX (shares of the image side)") from None
    return low, high
