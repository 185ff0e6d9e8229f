"""What the page does with one image, as plain functions: expert panels, caption, answers.

    viewer = Viewer(Predictor.from_checkpoint("demo_out/runs/experts"))
    result = viewer.look(LookRequest(image, "00576.png", question="what colour is the circle?"))
    result.panels[0].png        # the edge map as `prismer label --visualize` draws it
    result.caption, result.answer, result.timings

Without a predictor only expert panels are drawn, for any ready experts. Every failure of
one part (an expert that raises, a question the model cannot take) becomes a message on
that part of the result; the rest of the result is still filled in.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data.preview import preview_picture
from ..errors import PrismerError
from ..runner import ExpertRunner
from ..registry import Registry, get_registry

#: ``progress(stage, done, total)``: called before each stage of a look.
StageProgress = Callable[[str, int, int], None]
#: Beam width of captions and answers: what `prismer caption` and `prismer vqa` use.
BEAMS = 3


class RequestError(PrismerError):
    """A request the viewer cannot take as it is (said before any work is queued)."""


@dataclass(frozen=True)
class LookRequest:
    """One image and what to do with it.

    ``experts``: the panels to draw (None: the checkpoint's experts). ``question`` None asks
    nothing; a question with ``answers`` ranks them instead of generating an answer.
    """

    image: np.ndarray
    name: str
    experts: tuple[str, ...] | None = None
    caption: bool = True
    question: str | None = None
    answers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Panel:
    """One expert's map drawn beside the image (PNG bytes), or why it could not be drawn."""

    expert: str
    png: bytes | None
    size: tuple[int, int] | None  # width, height of the PNG
    error: str = ""


@dataclass
class LookResult:
    image_name: str
    image_size: tuple[int, int]  # width, height
    checkpoint: str | None
    panels: list[Panel] = field(default_factory=list)
    caption: str | None = None
    question: str | None = None
    answer: str | None = None
    ranking: list[tuple[str, float]] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # "caption" / "answer": message
    timings: list[tuple[str, float]] = field(default_factory=list)  # (stage, seconds)

    @property
    def experts_ran(self) -> list[str]:
        return [panel.expert for panel in self.panels if panel.png is not None]


class Viewer:
    """The page's work on one image; a predictor is optional (expert panels only without)."""

    def __init__(
        self,
        predictor: Any = None,
        *,
        registry: Registry | None = None,
        device: str = "cpu",
        expert_settings: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        """``predictor``: a :class:`~prismer_core.inference.Predictor` (its experts run for the
        model; panels are drawn by runners of their own). ``expert_settings``: settings of the
        experts the panels run, as ``--set`` gives them."""
        self.predictor = predictor
        self.registry = registry or get_registry()
        self.device = device
        self.expert_settings = dict(expert_settings or {})
        self._runners: dict[str, ExpertRunner] = {}
        self.ready_experts = self._ready_experts()

    @property
    def checkpoint(self) -> str | None:
        return str(self.predictor.checkpoint) if self.predictor is not None else None

    @property
    def model_experts(self) -> list[str]:
        return list(self.predictor.experts) if self.predictor is not None else []

    @property
    def model_experts_used(self) -> list[str]:
        """The checkpoint's experts the model reads here (less those `--missing-experts drop` left out)."""
        return list(self.predictor.experts_used) if self.predictor is not None else []

    @property
    def dropped_experts(self) -> dict[str, str]:
        """The checkpoint's experts the model runs without here, with why."""
        return dict(self.predictor.dropped_experts) if self.predictor is not None else {}

    @property
    def default_experts(self) -> list[str]:
        """The panels drawn unless the page chooses: the experts the model reads, or every ready one."""
        return self.model_experts_used if self.predictor is not None else list(self.ready_experts)

    def check(self, request: LookRequest) -> LookRequest:
        """The request with its experts filled in, or a :class:`RequestError` saying what is wrong."""
        experts = tuple(request.experts) if request.experts is not None else tuple(self.default_experts)
        unknown = [name for name in experts if name not in self.ready_experts]
        if unknown:
            offered = ", ".join(self.ready_experts) or "none"
            raise RequestError(f"expert {', '.join(repr(n) for n in unknown)} is not one of the ready experts ({offered})")
        if self.predictor is None and (request.caption or request.question is not None):
            raise RequestError("no checkpoint is loaded, so there is no caption or answer: start `prismer serve --checkpoint RUN`")
        question = request.question
        if question is not None:
            question = question.strip()
            if not question:
                raise RequestError("the question is empty: type a question, then press Ask")
        answers = tuple(dict.fromkeys(a.strip() for a in request.answers if a.strip()))
        if question is None and answers:
            raise RequestError("an answer list was given without a question")
        if not experts and not request.caption and question is None:
            raise RequestError("nothing to do: choose at least one expert")
        return LookRequest(request.image, request.name, experts, request.caption, question, answers)

    def look(self, request: LookRequest, progress: StageProgress | None = None) -> LookResult:
        """Draw the panels, write the caption, answer the question (each as asked)."""
        request = self.check(request)
        stages = [*(f"expert {name}" for name in request.experts)]
        stages += ["caption"] if request.caption else []
        stages += ["answer"] if request.question is not None else []
        report = progress or (lambda stage, done, total: None)
        height, width = request.image.shape[:2]
        result = LookResult(request.name, (width, height), self.checkpoint, question=request.question)
        for done, stage in enumerate(stages):
            report(stage, done, len(stages))
            start = time.perf_counter()
            if stage.startswith("expert "):
                result.panels.append(self._panel(stage.removeprefix("expert "), request))
            elif stage == "caption":
                result.caption = self._attempt(result, "caption", lambda: self.predictor.caption([request.image], num_beams=BEAMS)[0])
            else:
                self._attempt(result, "answer", lambda: self._answer(result, request))
            result.timings.append((self._stage_label(stage, request), time.perf_counter() - start))
        report("done", len(stages), len(stages))
        return result

    # -- parts ------------------------------------------------------------------------------
    def _panel(self, name: str, request: LookRequest) -> Panel:
        try:
            output = self._runner(name)([request.image], [request.name])[name][0]
            picture = preview_picture(request.image, output, f"{name}: {request.name}")
        except PrismerError as exc:
            return Panel(name, None, None, str(exc))
        except Exception as exc:  # a plugin's bug must not take the page down
            return Panel(name, None, None, f"expert '{name}' failed: {type(exc).__name__}: {exc}")
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        return Panel(name, buffer.getvalue(), picture.size)

    def _answer(self, result: LookResult, request: LookRequest) -> None:
        if request.answers:
            ranking = self.predictor.rank([request.image], [request.question], list(request.answers))[0]
            result.answer = ranking.answer
            result.ranking = list(zip(ranking.candidates, ranking.scores))
        else:
            result.answer = self.predictor.answer([request.image], [request.question], num_beams=BEAMS)[0]

    @staticmethod
    def _attempt(result: LookResult, part: str, work: Callable[[], Any]) -> Any:
        """``work()``, or None with its failure written to ``result.errors[part]``."""
        try:
            return work()
        except PrismerError as exc:
            result.errors[part] = str(exc)
        except Exception as exc:  # the page reports it; the server keeps serving
            result.errors[part] = f"the {part} failed: {type(exc).__name__}: {exc}"
        return None

    @staticmethod
    def _stage_label(stage: str, request: LookRequest) -> str:
        if stage == "caption":
            return f"caption (beam {BEAMS})"
        if stage == "answer":
            return f"rank {len(request.answers)} answers" if request.answers else f"answer (beam {BEAMS})"
        return stage

    def _runner(self, name: str) -> ExpertRunner:
        """One runner per expert, made and loaded on first use, so one broken expert spoils only its panel."""
        if name not in self._runners:
            self._runners[name] = ExpertRunner([name], registry=self.registry, device=self.device, settings=self.expert_settings)
        return self._runners[name]

    def _ready_experts(self) -> list[str]:
        names = list(dict.fromkeys([*self.model_experts, *sorted(self.registry.experts)]))
        return [name for name in names if _ready(self.registry, name, self.expert_settings)]


def _ready(registry: Registry, name: str, settings: Mapping[str, Mapping[str, Any]]) -> bool:
    try:
        return registry.readiness(name, settings).ready
    except PrismerError:
        return False


def parse_answer_list(text: str | Sequence[str]) -> tuple[str, ...]:
    """Candidate answers from the page's box: one per line (or a list); blank lines ignored."""
    lines = text.splitlines() if isinstance(text, str) else list(text)
    return tuple(line.strip() for line in lines if line.strip())
