"""`prismer serve`: a local web page to look at what the experts see and talk to a checkpoint."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import typer

from prismer_core.errors import PrismerError

from .infer import DEVICE, MISSING, PRECISION, SETTINGS, _predictor


def serve(
    checkpoint: Path = typer.Option(None, "--checkpoint", "-c", help="A checkpoint or run folder to caption and answer with \\[default: none: expert maps only]."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; only this machine can reach the default. The page has no login: anyone who reaches it can use it."),
    port: int = typer.Option(7860, "--port", "-p", min=0, max=65535, help="Port to listen on (0: any free port; the address is printed)."),
    examples: Path = typer.Option(None, "--examples", help="A folder of images to offer as examples \\[default: the held-out images of the checkpoint's training data, when they exist]."),
    queue_size: int = typer.Option(8, "--queue-size", min=1, help="Requests that may wait while one runs; more are told the server is busy."),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", min=0.01, help="Largest upload, in MB."),
    max_megapixels: float = typer.Option(50.0, "--max-megapixels", min=0.001, help="Largest image, in megapixels once decoded."),
    device: str = DEVICE,
    precision: str = PRECISION,
    assignments: list[str] = SETTINGS,
    missing_experts: str = MISSING,
) -> None:
    """Start a web page: pick or drop an image, see each expert's map, the caption, answers to your questions.

    With --checkpoint the page writes captions (beam 3) and answers questions (open-ended, or by ranking an answer list), and shows which experts ran and how long each stage took. Without, it draws the maps of any ready experts chosen in the page. Requests run one at a time; up to --queue-size wait, with their place in the queue shown.
    """
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise PrismerError(f"`prismer serve` needs the web server packages ({exc.name} is missing): pip install 'prismer[serve]'") from None
    listener = _listen(host, port)  # before the slow loading, so a taken port fails at once
    try:
        app, viewer, offered = _build(checkpoint, examples, queue_size, max_upload_mb, max_megapixels, device, precision, assignments,
                                      missing_experts)
        bound_host, bound_port = listener.getsockname()[:2]
        typer.echo(f"experts: {', '.join(viewer.model_experts) or 'none'} in the model; ready to draw: {', '.join(viewer.ready_experts) or 'none'}", err=True)
        typer.echo(f"examples: {len(offered)}" + (f" from {offered.source}" if offered.source else ""), err=True)
        if not _is_loopback(bound_host):
            typer.echo(f"warning: listening on {bound_host}, reachable from other machines; the page has no login", err=True)
        url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        typer.echo(f"Prismer page: http://{url_host}:{bound_port}/  (Ctrl+C stops it)")
        uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[listener])
    finally:
        listener.close()


def _build(checkpoint, examples, queue_size, max_upload_mb, max_megapixels, device, precision, assignments,
           missing_experts="refuse"):
    """The app and what it serves: the checkpoint's predictor (if any), the viewer, the examples."""
    from prismer_core.experts.settings import parse_assignments
    from prismer_core.serve import UploadLimits, Viewer
    from prismer_core.serve.web import create_app

    predictor = None
    if checkpoint is not None:
        typer.echo(f"loading {checkpoint} ...", err=True)
        predictor = _predictor(checkpoint, None, device, assignments, precision, missing_experts)
        settings = parse_assignments(assignments, known_experts=predictor.experts) if assignments else None
    else:
        settings = parse_assignments(assignments) if assignments else None
    viewer = Viewer(predictor, device=device, expert_settings=settings)
    offered = _examples(examples, predictor)
    limits = UploadLimits(round(max_upload_mb * 2**20), round(max_megapixels * 1e6))
    return create_app(viewer, limits=limits, examples=offered, max_waiting=queue_size), viewer, offered


def _listen(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        listener = socket.socket(family, kind, proto)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
    except OSError as exc:
        raise PrismerError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (choose another --port or --host)") from None
    listener.listen(64)
    return listener


def _examples(folder: Path | None, predictor):
    from prismer_core.checkpoint import read_checkpoint_info
    from prismer_core.serve import Examples

    if folder is not None:
        try:
            return Examples.from_folder(folder)
        except PrismerError as exc:
            raise PrismerError(f"--examples {folder}: {exc}") from None
    if predictor is None:
        return Examples([])
    return Examples.from_checkpoint_data(read_checkpoint_info(predictor.checkpoint).extra, predictor.checkpoint)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
