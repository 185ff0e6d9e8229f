"""The web app of `prismer serve`: one page, a small JSON API, a bounded queue (FastAPI).

    GET  /                      the page (static/index.html: plain HTML and JavaScript, no CDN)
    GET  /api/info              checkpoint, experts (trained with, used, dropped), examples, limits, queue
    GET  /api/examples/{id}     an example image, by its number in the allow-list
    POST /api/jobs              multipart: image (a file) or example (a number); experts,
                                caption, question, answers -> 202 {id, state, ahead}
    GET  /api/jobs/{id}         waiting (with how many are ahead) | running (stage, done/total)
                                | done (result) | failed (error)

Every refusal is JSON ``{"error": "..."}`` with a 4xx/5xx status; 503 (queue full) carries
Retry-After. Request bodies are refused by their Content-Length before they are read.
"""

from __future__ import annotations

import base64
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from ..errors import PrismerError
from .examples import Examples
from .jobs import JobQueue, JobStatus, QueueFull
from .uploads import UploadError, UploadLimits, decode_upload, megabytes
from .viewer import LookRequest, LookResult, RequestError, Viewer, parse_answer_list

#: Room for the form fields (question, answers, experts) beside the image in one request body.
FORM_OVERHEAD = 1024 * 1024
#: How often the page asks how its job is doing (milliseconds).
POLL_MS = 250


def create_app(viewer: Viewer, *, limits: UploadLimits | None = None, examples: Examples | None = None, max_waiting: int = 8) -> FastAPI:
    """The app around ``viewer``; its one worker thread stops when the app shuts down."""
    limits = limits or UploadLimits()
    examples = examples or Examples([])
    queue = JobQueue(viewer.look, max_waiting=max_waiting)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        queue.close()

    app = FastAPI(title="Prismer", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.queue = queue

    @app.middleware("http")
    async def refuse_large_bodies(request: Request, call_next):
        if request.method == "POST":
            length = request.headers.get("content-length")
            if length is None or not length.isdigit():
                return _error(411, "send the upload with a Content-Length header")
            if int(length) > limits.max_bytes + FORM_OVERHEAD:
                return _error(413, f"the upload is {megabytes(int(length))} MB; the largest upload is {megabytes(limits.max_bytes)} MB")
        return await call_next(request)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return _error(exc.status_code, f"{request.url.path}: {str(exc.detail).lower()}")

    @app.exception_handler(RequestValidationError)
    async def bad_form(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'request'}: {e['msg']}" for e in exc.errors())
        return _error(400, f"the request is malformed: {problems}")

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/api/info")
    def info() -> dict:
        return {
            "checkpoint": viewer.checkpoint,
            "model_experts": viewer.model_experts,
            "model_experts_used": viewer.model_experts_used,
            "dropped_experts": viewer.dropped_experts,
            "ready_experts": viewer.ready_experts,
            "default_experts": viewer.default_experts,
            "examples": [{"id": e.id, "name": e.name, "url": f"/api/examples/{e.id}"} for e in examples.items],
            "examples_from": examples.source,
            "limits": {"max_bytes": limits.max_bytes, "max_pixels": limits.max_pixels, "text": limits.describe()},
            "queue": queue.counts(),
            "poll_ms": POLL_MS,
        }

    @app.get("/api/examples/{example_id}")
    def example_image(example_id: int):
        example = examples.get(example_id)
        if example is None:
            return _error(404, f"there is no example {example_id}")
        return FileResponse(example.path)

    @app.post("/api/jobs")
    async def submit(request: Request):
        try:
            form = await request.form(max_files=1, max_fields=16)
        except Exception as exc:  # python-multipart's own complaint about a body it cannot parse
            return _error(400, f"the request is not a form this page can read: {exc}")
        try:
            fields = _fields(form)
            if "image" in fields:
                upload = fields["image"]
                name = _display_name(upload.filename)
                if upload.size is not None:
                    limits.check_size(upload.size, name)
                data = await upload.read(limits.max_bytes + 1)
            else:
                chosen = examples.get(fields["example"])
                if chosen is None:
                    return _error(404, f"there is no example {fields['example']}")
                name, data = chosen.name, await run_in_threadpool(chosen.path.read_bytes)
            array = await run_in_threadpool(decode_upload, data, name, limits)
            look = viewer.check(LookRequest(array, name, fields["experts"], fields["caption"], fields["question"], fields["answers"]))
            status = queue.submit(look)
        except QueueFull as exc:
            return _error(503, str(exc), headers={"Retry-After": str(round(exc.retry_after))}, retry_after=exc.retry_after)
        except UploadError as exc:
            return _error(413 if exc.too_large else 400, str(exc))
        except PrismerError as exc:
            return _error(400, str(exc))
        finally:
            await form.close()  # the upload's spooled file
        return JSONResponse(_status_json(status), status_code=202)

    @app.get("/api/jobs/{job_id}")
    def job(job_id: str):
        status = queue.status(job_id)
        if status is None:
            return _error(404, "this request is not known (any more): the server was restarted, or it finished long ago")
        return _status_json(status)

    return app


def _error(status: int, message: str, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def _fields(form) -> dict:
    """The fields of a job request, checked. A field that is absent means its default; a field
    that is present means what it says, even empty (``experts=""``: no panels; ``question=""``:
    a question was asked, and it is empty)."""
    unknown = sorted(set(form) - {"image", "example", "experts", "caption", "question", "answers"})
    if unknown:
        raise RequestError(f"unknown field {', '.join(unknown)}: send image or example, experts, caption, question, answers")
    image, example = form.get("image"), form.get("example")
    if (image is None) == (example is None):
        raise RequestError("send one image: an upload (image) or an example's number (example)")
    fields: dict = {}
    if image is not None:
        if not isinstance(image, UploadFile):
            raise RequestError("image must be a file upload")
        fields["image"] = image
    elif not isinstance(example, str) or not example.strip().isdigit():
        raise RequestError(f"example must be an example's number, got {str(example)[:40]!r}")
    else:
        fields["example"] = int(example)
    experts = form.get("experts")
    fields["experts"] = None if experts is None else tuple(n.strip() for n in str(experts).split(",") if n.strip())
    caption = str(form.get("caption", "true")).strip().lower()
    if caption not in ("true", "false"):
        raise RequestError(f"caption must be true or false, got {caption[:20]!r}")
    fields["caption"] = caption == "true"
    question = form.get("question")
    fields["question"] = None if question is None else str(question)
    fields["answers"] = parse_answer_list(str(form.get("answers", "")))
    return fields


def _display_name(filename: str | None) -> str:
    """The upload's own file name, for messages and titles only (never used as a path)."""
    name = (filename or "upload").replace("\\", "/").rsplit("/", 1)[-1].strip()
    return "".join(c for c in name if c.isprintable())[:80] or "upload"


def _status_json(status: JobStatus) -> dict:
    body = {
        "id": status.id, "state": status.state, "ahead": status.ahead, "stage": status.stage,
        "done": status.done, "total": status.total, "waited": round(status.waited, 3), "seconds": round(status.seconds, 3),
    }
    if status.state == "failed":
        body["error"] = status.error
    if status.state == "done":
        body["result"] = result_json(status.result)
    return body


def result_json(result: LookResult) -> dict:
    """A look's result as the page reads it: panels as PNG data URLs."""
    return {
        "image": {"name": result.image_name, "width": result.image_size[0], "height": result.image_size[1]},
        "checkpoint": result.checkpoint,
        "experts_ran": result.experts_ran,
        "panels": [
            {
                "expert": p.expert,
                "png": "data:image/png;base64," + base64.b64encode(p.png).decode() if p.png is not None else None,
                "width": p.size[0] if p.size else None,
                "height": p.size[1] if p.size else None,
                "error": p.error,
            }
            for p in result.panels
        ],
        "caption": result.caption,
        "question": result.question,
        "answer": result.answer,
        "ranking": [{"answer": a, "score": round(s, 4)} for a, s in result.ranking],
        "errors": result.errors,
        "timings": [{"stage": stage, "seconds": round(seconds, 3)} for stage, seconds in result.timings],
    }
