"""The model card of a checkpoint: ``README.md`` in the Hugging Face model-card format.

YAML front matter (``library_name``, ``pipeline_tag``, ``tags``, and a ``model-index`` with the
evaluation figures, as ``huggingface_hub.ModelCardData`` writes it), then Markdown for people:
the spec, each expert with the distribution and version that provided it (what to
``pip install``), what the model was trained on, and its figures when known. The checkpoint
writer (:func:`prismer_core.checkpoint.save_checkpoint`) renders it into every checkpoint
folder; ``prismer eval --update-card`` adds the figures it measured.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .specs import ModelSpec

CARD_FILE = "README.md"
PAPER = "https://arxiv.org/abs/2303.02506"
#: Hugging Face task types of the tasks a checkpoint is trained or evaluated on.
HF_TASKS = {"caption": "image-to-text", "vqa": "visual-question-answering", "classify": "image-classification"}


@dataclass(frozen=True)
class Figure:
    """One measured number: ``value`` of ``metric`` on ``task`` over ``dataset``."""

    task: str  # caption, vqa, classify
    dataset: str
    metric: str  # as prismer names it: "VQA accuracy", "CIDEr", "validation loss" ...
    value: float
    experts: tuple[str, ...] | None = None  # the experts that ran, when not all of them

    @property
    def label(self) -> str:
        return self.metric if self.experts is None else f"{self.metric}, experts: {', '.join(self.experts) or 'none'}"

    def eval_result(self):
        from huggingface_hub import EvalResult

        slug = "".join(c if c.isalnum() else "_" for c in self.metric.lower()).strip("_")
        return EvalResult(task_type=HF_TASKS.get(self.task, self.task), dataset_type="local", dataset_name=self.dataset,
                          metric_type=slug, metric_value=round(float(self.value), 5), metric_name=self.label)


@dataclass(frozen=True)
class CardFacts:
    """What a card says; built by the checkpoint writer from what it records."""

    name: str
    spec: ModelSpec
    experts: Sequence[Mapping[str, Any]]  # expert records, each with "provided_by" (or None)
    training: Mapping[str, Any] = field(default_factory=dict)  # the trainer's extra["training"]
    label_encoder: str | None = None
    backbones: Mapping[str, Any] = field(default_factory=dict)  # sources of the weights not copied
    figures: Sequence[Figure] = ()
    prismer_version: str = ""


def render_card(facts: CardFacts) -> str:
    """The whole ``README.md``: front matter, then the Markdown sections."""
    from huggingface_hub import ModelCardData

    tasks = list(facts.training.get("tasks") or ["caption"])
    data = ModelCardData(
        library_name="prismer",
        pipeline_tag=HF_TASKS["vqa" if tasks == ["vqa"] else "caption"],
        tags=["prismer", "vision-language", *[HF_TASKS[t] for t in tasks if t in HF_TASKS],
              *[f"prismer-expert-{e['name']}" for e in facts.experts]],
        model_name=facts.name,
        eval_results=[figure.eval_result() for figure in facts.figures] or None,
    )
    sections = [_intro(facts), _experts(facts), _model(facts), _training(facts), _evaluation(facts), _use(facts)]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(s.strip() for s in sections) + "\n"


def read_figures(card: str | Path) -> list[Figure]:
    """The figures a card's front matter holds (a missing or unreadable card has none)."""
    from huggingface_hub import ModelCard

    path = Path(card)
    if not path.is_file():
        return []
    try:
        results = ModelCard.load(path).data.eval_results or []
    except Exception:  # a card edited by hand into something else: start its figures afresh
        return []
    tasks = {hf: ours for ours, hf in HF_TASKS.items()}
    figures = []
    for result in results:
        metric, _, experts = (result.metric_name or result.metric_type).partition(", experts: ")
        figures.append(Figure(tasks.get(result.task_type, result.task_type), result.dataset_name, metric,
                              float(result.metric_value), tuple(e for e in experts.split(", ") if e) if experts else None))
    return figures


def merge_figures(old: Sequence[Figure], new: Sequence[Figure]) -> list[Figure]:
    """``old`` with each figure ``new`` measures again (same task, data, metric, experts) replaced."""
    key = lambda f: (f.task, f.dataset, f.metric, f.experts)  # noqa: E731
    replaced = {key(f) for f in new}
    return [f for f in old if key(f) not in replaced] + list(new)


def install_line(provided_by: Mapping[str, str] | None) -> str | None:
    """``pip install DIST==VERSION`` for an expert's recorded distribution (None: unknown)."""
    if not provided_by or not provided_by.get("distribution"):
        return None
    version = provided_by.get("version")
    return f"pip install {provided_by['distribution']}" + (f"=={version}" if version else "")


# -- sections ------------------------------------------------------------------------------


def _intro(facts: CardFacts) -> str:
    experts = ", ".join(e["name"] for e in facts.experts)
    reads = f"the maps of {len(facts.experts)} frozen experts ({experts})" if facts.experts else "RGB alone (PrismerZ: no experts)"
    return (
        f"# {facts.name}\n\n"
        f"A [Prismer]({PAPER}) vision-language model (captions, visual question answering, classification by "
        f"ranking) made with the `prismer` framework{' ' + facts.prismer_version if facts.prismer_version else ''}. "
        f"It reads an image together with {reads}."
    )


def _experts(facts: CardFacts) -> str:
    if not facts.experts:
        return "## Experts\n\nNone: this model reads RGB only."
    rows = ["| expert | version | kind | channels | provided by | install |", "|---|---|---|---|---|---|"]
    for expert in facts.experts:
        provider = expert.get("provided_by") or {}
        package = f"{provider.get('distribution', '')} {provider.get('version', '')}".strip() or "not recorded"
        line = install_line(provider)
        rows.append(f"| {expert['name']} | {expert['version']} | {expert['kind']} | {expert['channels']} | {package} | "
                    f"{f'`{line}`' if line else '-'} |")
    return (
        "## Experts\n\nEach expert is a plugin package. With all of them installed and ready the model runs as "
        "trained; `prismer experts check CHECKPOINT` says which are missing here and what to install, and "
        "`--missing-experts drop` runs it with those that are (answers may then be worse; see the figures below).\n\n"
        + "\n".join(rows)
    )


def _model(facts: CardFacts) -> str:
    spec = facts.spec
    vision = spec.vision.tower_name + (f" (weights: {spec.vision.pretrained})" if spec.vision.pretrained else "")
    if spec.decoder.kind == "causal_lm":
        decoder = (f"a frozen causal LM ({spec.decoder.config['model_type']}, weights: {spec.decoder.weights or 'random'}) "
                   f"read through a {spec.decoder.mapper.queries}-query mapper")
    else:
        decoder = f"{spec.decoder.layers} layers × {spec.decoder.hidden}" + (f" (weights: {spec.decoder.weights})" if spec.decoder.weights else "")
    lines = [
        f"- spec `{spec.name}`{': ' + spec.description if spec.description else ''} (in full: `spec.yaml`)",
        f"- image size {spec.image_size} px; vision tower `{vision}`; decoder {decoder}",
        f"- Experts Resampler: {spec.resampler.latents} latents, {spec.resampler.layers} layers",
        f"- frozen parts: {', '.join(spec.frozen) or 'none'}",
    ]
    if facts.label_encoder:
        lines.append(f"- semantic maps encoded by `{facts.label_encoder}` (file in this folder)")
    not_copied = [f"{part}: {source}" for part, source in facts.backbones.items() if source]
    if not_copied:
        lines.append(f"- weights loaded from their sources, not copied here: {'; '.join(not_copied)}")
    return "## Model\n\n" + "\n".join(lines)


def _training(facts: CardFacts) -> str:
    training = facts.training
    if not training:
        return "## Training\n\nNot recorded (saved outside `prismer train`)."
    samples = training.get("samples") or {}
    data = ", ".join(f"`{Path(p).name}`" for p in training.get("data") or []) or "not recorded"
    counts = ", ".join(f"{n} {task}" for task, n in samples.items())
    lines = [f"- data: {data}" + (f" ({counts} samples)" if counts else ""),
             f"- tasks: {', '.join(training.get('tasks') or [])}; step {training.get('step')}"
             + (f" of {training['max_steps']}" if training.get("max_steps") else "")]
    if training.get("expert_dropout"):
        lines.append(f"- expert dropout {training['expert_dropout']}: each expert's map was left out of a training "
                     "sample with this probability, so the model also answers with fewer experts")
    parent = training.get("parent")
    if parent:
        new = ", ".join(parent.get("new_experts") or []) or "none"
        lines.append(f"- started from `{parent.get('checkpoint')}` (step {parent.get('step')}, experts "
                     f"{', '.join(parent.get('experts') or []) or 'none'}); new experts: {new}")
    if training.get("caption_prompt"):
        lines.append(f"- caption prompt: \"{training['caption_prompt']}\" (used again at inference)")
    return "## Training\n\n" + "\n".join(lines)


def _evaluation(facts: CardFacts) -> str:
    if not facts.figures:
        return ("## Evaluation\n\nNo figures yet: `prismer eval --checkpoint CHECKPOINT --data TEST --task vqa "
                "--update-card` adds them here.")
    rows = ["| task | data | metric | value |", "|---|---|---|---|"]
    rows += [f"| {f.task} | {f.dataset} | {f.label} | {f.value:.4f} |" for f in facts.figures]
    return "## Evaluation\n\n" + "\n".join(rows)


def _use(facts: CardFacts) -> str:
    packages = sorted({line for e in facts.experts if (line := install_line(e.get("provided_by")))})
    install = "\n".join(packages) or "pip install prismer"
    return (
        "## Use\n\n```bash\n" + install + "\n"
        "prismer experts check CHECKPOINT            # a folder, or the Hub id this card came with\n"
        "prismer caption --checkpoint CHECKPOINT image.png\n"
        "prismer vqa --checkpoint CHECKPOINT image.png \"what colour is the circle?\"\n```\n\n"
        "```python\nfrom prismer_core.inference import Predictor\n"
        "predictor = Predictor.from_checkpoint(\"CHECKPOINT\")\npredictor.caption([\"image.png\"])\n```"
    )
