"""`prismer caption`, `prismer vqa`, `prismer eval`: a trained checkpoint at work."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from .app import IMAGE_ROOT

CHECKPOINT = typer.Option(..., "--checkpoint", "-c", help="A checkpoint folder, a run folder from `prismer train` (its latest checkpoint), or a Hugging Face Hub id owner/name\\[@revision] (from the hub's cache when offline).")
LABELS = typer.Option(None, "--labels", help="Read expert maps from this label store (from `prismer label`) instead of running the experts.")
DEVICE = typer.Option("cpu", "--device", help="Where the model and experts run: cpu, cuda, cuda:1 ...")
SETTINGS = typer.Option([], "--set", metavar="NAME.KEY=VALUE", help="A setting of an expert run on the fly, e.g. --set edge.low=50 (repeatable).")
BATCH = typer.Option(8, "--batch-size", "-b", min=1, help="Images per model call.")
PRECISION = typer.Option("fp32", "--precision", help="fp32, or bf16 (faster on CPUs with bf16 instructions and on GPUs; scores differ slightly).")
BEAMS = typer.Option(3, "--beams", min=1, help="Beam width (1: greedy).")
MISSING = typer.Option("refuse", "--missing-experts", help="An expert of the checkpoint that is not installed or not ready here: refuse (an error saying what to install), or drop (run with the others; the model masks it out, and the run says so).")


def _predictor(checkpoint: Path, labels: Path | None, device: str, assignments: list[str], precision: str,
               missing_experts: str = "refuse"):
    from prismer_core.checkpoint import read_checkpoint_info
    from prismer_core.experts.settings import parse_assignments
    from prismer_core.inference import Predictor, resolve_checkpoint

    settings = None
    if assignments:
        experts = read_checkpoint_info(resolve_checkpoint(checkpoint)).experts
        settings = parse_assignments(assignments, known_experts=list(experts))
    predictor = Predictor.from_checkpoint(checkpoint, labels=labels, device=device, expert_settings=settings,
                                          precision=precision, missing_experts=missing_experts)
    if predictor.dropped_experts:
        why = "; ".join(f"{name}: {reason}" for name, reason in predictor.dropped_experts.items())
        typer.echo(f"running without {', '.join(predictor.dropped_experts)} (trained with {', '.join(predictor.experts)}; "
                   f"using {', '.join(predictor.experts_used) or 'none'}) - {why}", err=True)
    return predictor


def caption(
    images: list[Path] = typer.Argument(..., metavar="IMAGES...", help="Image files to describe."),
    checkpoint: Path = CHECKPOINT,
    prompt: str = typer.Option(None, "--prompt", help="Text the caption continues, e.g. 'A picture of' \\[default: the prompt the model was trained with]."),
    beams: int = BEAMS,
    max_new_tokens: int = typer.Option(20, "--max-new-tokens", min=1, help="Longest caption, in tokens."),
    min_length: int = typer.Option(0, "--min-length", min=0, help="Fewest tokens before the caption may end."),
    out: Path = typer.Option(None, "--out", "-o", help="Also write the captions to this JSONL file ({image, caption, experts} per line; experts: those that ran)."),
    batch_size: int = BATCH,
    labels: Path = LABELS,
    device: str = DEVICE,
    precision: str = PRECISION,
    assignments: list[str] = SETTINGS,
    missing_experts: str = MISSING,
) -> None:
    """Describe images with a trained model (beam search with the decoder's key/value cache).

    The experts the checkpoint was trained with run on the fly, unless --labels names a label store that holds their maps.
    """
    from prismer_core.atomic import write_bytes_atomic
    from prismer_core.progress import progress_bar

    predictor = _predictor(checkpoint, labels, device, assignments, precision, missing_experts)
    with progress_bar("captioning", len(images)) as advance:
        captions = predictor.caption(images, prompt, num_beams=beams, max_new_tokens=max_new_tokens,
                                     min_length=min_length, batch_size=batch_size, progress=advance)
    for image, text in zip(images, captions):
        typer.echo(f"{image}: {text or '(empty: the model ended the caption at once)'}")
    if out is not None:
        lines = [json.dumps({"image": str(image), "caption": text, "experts": predictor.experts_used})
                 for image, text in zip(images, captions)]
        write_bytes_atomic(out, ("\n".join(lines) + "\n").encode())
        typer.echo(f"wrote {len(lines)} captions to {out}", err=True)


def vqa(
    image: Path = typer.Argument(..., help="The image the question is about."),
    question: str = typer.Argument(..., help="The question, e.g. \"what colour is the star?\""),
    checkpoint: Path = CHECKPOINT,
    answers: Path = typer.Option(None, "--answers", help="Rank these candidate answers (a text file, one per line, or a JSON list) instead of generating one."),
    prefilter_k: int = typer.Option(None, "--prefilter-k", min=1, help="With --answers: score in full only the K candidates whose first token is most likely."),
    top: int = typer.Option(5, "--top", min=1, help="With --answers: how many ranked candidates to show."),
    beams: int = BEAMS,
    labels: Path = LABELS,
    device: str = DEVICE,
    precision: str = PRECISION,
    assignments: list[str] = SETTINGS,
    missing_experts: str = MISSING,
) -> None:
    """Answer a question about an image: generated (open-ended) or ranked from --answers."""
    from prismer_core.inference import read_candidates

    candidates = read_candidates(answers) if answers is not None else None
    predictor = _predictor(checkpoint, labels, device, assignments, precision, missing_experts)
    if candidates is None:
        typer.echo(predictor.answer([image], [question], num_beams=beams)[0] or "(empty: the model ended the answer at once)")
        return
    ranking = predictor.rank([image], [question], candidates, prefilter_k=prefilter_k)[0]
    typer.echo(ranking.answer)
    for answer, score in list(zip(ranking.candidates, ranking.scores))[:top]:
        typer.echo(f"  {score:9.3f}  {answer}", err=True)


def evaluate(
    checkpoint: Path = CHECKPOINT,
    data: Path = typer.Option(..., "--data", "-d", help="Test manifest: JSONL (caption / question+answer(s) / image+label rows), COCO captions / VQAv2 questions / BLIP-style .json, or .tar shards."),
    task: str = typer.Option(..., "--task", help="caption (CIDEr, BLEU), vqa (VQA accuracy), classify (top-1 accuracy) or retrieval (recall@1/5/10 both ways, by the contrastive pass)."),
    answers: Path = typer.Option(None, "--answers", help="vqa: rank these candidate answers (one per line, or a JSON list) instead of generating."),
    prefilter_k: int = typer.Option(None, "--prefilter-k", min=1, help="vqa with --answers: score in full only the K candidates whose first token is most likely."),
    classes: Path = typer.Option(None, "--classes", help="classify: the class names (one per line, or a JSON list) \\[default: the labels in --data]."),
    template: str = typer.Option("A photo of a {}.", "--template", help="classify: the sentence ranked for each class."),
    by: str = typer.Option("likelihood", "--by", help="classify: rank the class sentences by likelihood as a caption, or by embedding similarity (zero-shot; needs the contrastive pass)."),
    report: Path = typer.Option(None, "--report", "-o", help="Where to write the JSON report \\[default: eval-TASK.json here]."),
    limit: int = typer.Option(None, "--limit", min=1, help="Only the first N images (caption, classify) or questions (vqa)."),
    image_root: Path = IMAGE_ROOT,
    beams: int = BEAMS,
    batch_size: int = BATCH,
    labels: Path = LABELS,
    device: str = DEVICE,
    precision: str = PRECISION,
    assignments: list[str] = SETTINGS,
    missing_experts: str = MISSING,
    update_card: bool = typer.Option(False, "--update-card", help="Also write the figures into the checkpoint's model card (README.md), with the experts that ran."),
) -> None:
    """Score a checkpoint on a test manifest; write every prediction and the metrics to a JSON report.

    Captions: CIDEr and BLEU-1..4 (pycocoevalcap, no Java). VQA: accuracy with the standard answer normalisation and min(#matches/3, 1) over several reference answers. Rows with a "type" (e.g. colour, count) are also scored per type. Classify: top-1 accuracy by ranking the template sentence of each class. Retrieval: each caption row searches the manifest's distinct images, each image all its captions; recall@K is the share whose right answer ranks K-th or better.
    """
    from prismer_core.inference import evaluate as run_evaluation
    from prismer_core.inference import read_candidates, report_table

    candidates = read_candidates(answers) if answers is not None else None
    class_names = read_candidates(classes, "classes") if classes is not None else None
    predictor = _predictor(checkpoint, labels, device, assignments, precision, missing_experts)
    result = run_evaluation(
        predictor, data, task, answers=candidates, classes=class_names, template=template, classify_by=by, prefilter_k=prefilter_k,
        num_beams=beams, batch_size=batch_size, limit=limit, image_root=image_root, console=Console(stderr=True),
    )
    path = result.write(report or Path(f"eval-{task}.json"))
    typer.echo(result.summary)
    Console().print(report_table(result))
    typer.echo(f"report: {path}")
    if update_card:
        typer.echo(f"model card: {result.update_card()}")
