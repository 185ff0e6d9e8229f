"""`prismer serve` without a browser: the viewer's functions (an image in, expert panels, a
caption and answers out), upload limits, the bounded job queue, and the web API in process.

The model is the small one the inference tests train (tests/inference_helpers.py, edge expert).
"""

from __future__ import annotations

import importlib.metadata as md
import io
import re
import socket
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from plugin_helpers import site_entry_points, write_images
from serve_helpers import QUESTION, preview_size
from prismer_core.data.images import content_key, read_rgb
from prismer_core.data.label_store import LabelStore
from prismer_core.errors import PrismerError
from prismer_core.experts.validate import ExpertOutputError
from prismer_core.inference import Predictor
from prismer_core.registry import load_registry
from prismer_core.serve import (
    Examples, JobQueue, LookRequest, QueueFull, RequestError, UploadError, UploadLimits, Viewer, decode_upload,
)
from prismer_core.serve.web import create_app


@pytest.fixture(scope="module")
def trained(trained):
    return trained


@pytest.fixture(scope="module")
def predictor(trained):
    return Predictor.from_checkpoint(trained.run)


@pytest.fixture(scope="module")
def viewer(predictor):
    return Viewer(predictor)


def png(data: bytes) -> Image.Image:
    picture = Image.open(io.BytesIO(data))
    assert picture.format == "PNG"
    picture.load()
    return picture


# -- the viewer: an image in, panels, caption and answers out ---------------------------------

def test_look_draws_each_panel_as_label_visualize_and_writes_the_cli_caption(trained, viewer, predictor, cli, tmp_path):
    path = trained.test_images()[0]
    image = read_rgb(path)
    stages = []
    result = viewer.look(LookRequest(image, path.name, ("edge", "ocr"), question=QUESTION),
                         lambda stage, done, total: stages.append((stage, done, total)))

    assert [p.expert for p in result.panels] == ["edge", "ocr"] and result.experts_ran == ["edge", "ocr"]
    store = tmp_path / "labels"
    cli("label", path, "--experts", "edge,ocr", "--out", store, "--visualize")
    for panel in result.panels:
        picture = png(panel.png)
        assert picture.size == panel.size == preview_size((image.shape[1], image.shape[0]))
        written = Image.open(LabelStore(store).preview_path(panel.expert, content_key(path.read_bytes())))
        assert np.array_equal(np.asarray(picture), np.asarray(written))  # drawn as `prismer label --visualize` draws it

    printed = cli("caption", "--checkpoint", trained.run, path).stdout.strip()
    assert result.caption and printed == f"{path}: {result.caption}"
    assert result.answer == predictor.answer([path], [QUESTION])[0] and result.answer
    assert result.checkpoint == str(trained.checkpoint) and not result.errors
    assert [stage for stage, _ in result.timings] == ["expert edge", "expert ocr", "caption (beam 3)", "answer (beam 3)"]
    assert all(seconds > 0 for _, seconds in result.timings)
    assert stages == [("expert edge", 0, 4), ("expert ocr", 1, 4), ("caption", 2, 4), ("answer", 3, 4), ("done", 4, 4)]


def test_an_answer_list_is_ranked_with_scores(trained, viewer, predictor):
    path = trained.test_images()[1]
    answers = ("one", "two", "three", "two", " ")  # repeats and blanks are dropped
    result = viewer.look(LookRequest(read_rgb(path), path.name, (), caption=False, question=QUESTION, answers=answers))
    expected = predictor.rank([path], [QUESTION], ["one", "two", "three"])[0]
    assert result.answer == expected.answer == result.ranking[0][0]
    assert result.ranking == list(zip(expected.candidates, expected.scores))
    assert [s for _, s in result.ranking] == sorted((s for _, s in result.ranking), reverse=True)
    assert result.caption is None and not result.panels and result.timings[0][0] == "rank 3 answers"


def test_requests_that_cannot_be_done_say_why(viewer):
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(RequestError, match="the question is empty"):
        viewer.check(LookRequest(image, "x.png", question="   "))
    with pytest.raises(RequestError, match=r"'nosuch' is not one of the ready experts \(.*edge.*\)"):
        viewer.check(LookRequest(image, "x.png", ("nosuch",)))
    with pytest.raises(RequestError, match="without a question"):
        viewer.check(LookRequest(image, "x.png", answers=("one",)))
    assert viewer.check(LookRequest(image, "x.png")).experts == ("edge",)  # the checkpoint's experts by default


def test_without_a_checkpoint_only_ready_experts_are_drawn(trained):
    viewer = Viewer()
    assert {"edge", "ocr"} <= set(viewer.ready_experts) == set(viewer.default_experts)
    assert viewer.checkpoint is None and viewer.model_experts == []
    path = trained.test_images()[0]
    result = viewer.look(LookRequest(read_rgb(path), path.name, ("edge",), caption=False))
    assert result.experts_ran == ["edge"] and result.caption is None and result.answer is None
    with pytest.raises(RequestError, match="no checkpoint is loaded"):
        viewer.check(LookRequest(read_rgb(path), path.name, ("edge",)))


def test_an_expert_that_fails_gets_a_message_and_the_others_are_drawn(plugin_site, monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(plugin_site))
    registry = load_registry([*md.entry_points(group="prismer"), *site_entry_points(plugin_site)])
    viewer = Viewer(registry=registry)
    marked = write_images(tmp_path, 1, marked=[0])[0]  # faulty_raise raises on a magenta corner
    result = viewer.look(LookRequest(read_rgb(marked), marked.name, ("faulty_raise", "edge"), caption=False))
    failed, drawn = result.panels
    assert failed.png is None and drawn.png is not None and result.experts_ran == ["edge"]
    assert failed.error == (f"expert 'faulty_raise' (from prismer-faulty 1.0.0) on image {marked.name}: "
                            "predict() raised RuntimeError: cannot handle this picture")


def test_when_the_model_fails_the_page_says_so_and_keeps_the_panels(trained):
    class FailingPredictor:
        """Stands in for a Predictor whose expert breaks inside the model's input path."""
        checkpoint, experts, experts_used, dropped_experts = "runs/broken", ["edge"], ["edge"], {}

        def caption(self, images, **options):
            raise ExpertOutputError("edge", "image 0 (array)", "predict() raised RuntimeError: boom", "prismer-edge 1.0")

        def answer(self, images, questions, **options):
            raise RuntimeError("a bug")

    path = trained.test_images()[0]
    result = Viewer(FailingPredictor()).look(LookRequest(read_rgb(path), path.name, question=QUESTION))
    assert result.experts_ran == ["edge"] and result.caption is None and result.answer is None
    assert result.errors == {
        "caption": "expert 'edge' (from prismer-edge 1.0) on image image 0 (array): predict() raised RuntimeError: boom",
        "answer": "the answer failed: RuntimeError: a bug",
    }


# -- uploads ------------------------------------------------------------------------------------

def encoded(size=(40, 30), fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format=fmt)
    return buffer.getvalue()


def test_uploads_are_checked_for_size_pixels_and_content():
    limits = UploadLimits(max_bytes=50_000, max_pixels=2_000)
    assert decode_upload(encoded(), "red.png", limits).shape == (30, 40, 3)
    assert decode_upload(encoded(fmt="JPEG"), "red.jpg", limits).shape == (30, 40, 3)
    cases = {
        b"": "red.png is empty (0 bytes)",
        b"GIF89a not really": "red.png is not an image this page can read",
        encoded()[:60]: "cannot read image red.png",  # a truncated PNG: the header reads, the pixels do not
        encoded((100, 30)): "red.png is 100×30 = 0.003 megapixels; the limit is 0.002 megapixels",
        b"x" * 60_000: "red.png is 0.0572 MB; the largest upload is 0.0477 MB",
    }
    for data, message in cases.items():
        with pytest.raises(UploadError, match=re.escape(message)):
            decode_upload(data, "red.png", limits)


# -- the queue ----------------------------------------------------------------------------------

def test_the_queue_runs_one_job_at_a_time_and_refuses_beyond_its_bound():
    release = threading.Event()

    def work(payload, progress):
        progress("thinking", 0, 1)
        if payload == "block":
            release.wait(10)
        if payload == "bad":
            raise PrismerError("a clear message")
        if payload == "bug":
            raise ZeroDivisionError("oops")
        return payload.upper()

    jobs = JobQueue(work, max_waiting=2)
    try:
        first = jobs.submit("block")
        _wait(lambda: jobs.status(first.id).state == "running")
        second, third = jobs.submit("bad"), jobs.submit("bug")
        assert (jobs.status(second.id).ahead, jobs.status(third.id).ahead) == (1, 2)
        with pytest.raises(QueueFull, match="2 requests are waiting already") as refused:
            jobs.submit("late")
        assert refused.value.retry_after >= 1
        assert jobs.status(first.id).stage == "thinking"
        release.set()
        _wait(lambda: jobs.status(third.id).state == "failed")
        assert jobs.status(first.id).result == "BLOCK"
        assert jobs.status(second.id).error == "a clear message"
        assert jobs.status(third.id).error == "internal error: ZeroDivisionError: oops"
        assert jobs.status(jobs.submit("after").id).state in ("waiting", "running", "done")  # still serving
        assert jobs.status("nosuch") is None
    finally:
        release.set()
        jobs.close()


def _wait(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_examples_are_the_test_images_of_the_checkpoints_run_from_any_directory(trained, monkeypatch, tmp_path):
    """`prismer train --out runs/edge` records its run folder relative to where it ran; `prismer
    serve --checkpoint` started elsewhere finds the examples through the checkpoint's own run."""
    from prismer_core.checkpoint import read_checkpoint_info

    extra = read_checkpoint_info(trained.checkpoint).extra
    relative = {**extra, "training": {**extra["training"], "run": "runs/edge"}}
    monkeypatch.chdir(tmp_path)
    test_images = {p.resolve() for p in (trained.demo / "images" / "test").iterdir()}
    assert 0 < len(test_images) <= 12
    assert {e.path.resolve() for e in Examples.from_checkpoint_data(relative, trained.checkpoint).items} == test_images
    assert len(Examples.from_checkpoint_data(relative)) == 0  # the recorded folder alone is not found from here


# -- the web API, in process ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(trained, viewer):
    examples = Examples.from_folder(trained.demo / "images" / "test")
    app = create_app(viewer, limits=UploadLimits(max_bytes=200_000, max_pixels=1_000_000), examples=examples, max_waiting=4)
    with TestClient(app) as client:
        yield client


def finished(client, response, timeout=60.0) -> dict:
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(f"/api/jobs/{job_id}").json()
        if body["state"] in ("done", "failed"):
            return body
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_the_api_answers_an_upload_and_an_example(trained, client, viewer):
    info = client.get("/api/info").json()
    assert info["checkpoint"] == str(trained.checkpoint) and info["model_experts"] == ["edge"]
    assert [e["name"] for e in info["examples"]][:2] == [p.name for p in sorted((trained.demo / "images" / "test").iterdir())][:2]
    assert 'id="file-input"' in client.get("/").text
    example = client.get(info["examples"][0]["url"])
    assert example.status_code == 200 and png(example.content).size == (64, 64)

    path = trained.test_images()[0]
    body = finished(client, client.post("/api/jobs", files={"image": (path.name, path.read_bytes(), "image/png")},
                                        data={"question": QUESTION}))
    result = body["result"]
    assert body["state"] == "done" and result["caption"] == viewer.predictor.caption([path])[0]
    assert result["answer"] and result["experts_ran"] == ["edge"] and result["image"] == {"name": path.name, "width": 64, "height": 64}
    assert [t["stage"] for t in result["timings"]] == ["expert edge", "caption (beam 3)", "answer (beam 3)"]
    from base64 import b64decode
    panel = result["panels"][0]
    assert png(b64decode(panel["png"].split(",", 1)[1])).size == (panel["width"], panel["height"]) == preview_size((64, 64))

    by_example = finished(client, client.post("/api/jobs", data={"example": "0", "experts": "ocr", "caption": "false"}))
    assert by_example["result"]["experts_ran"] == ["ocr"] and by_example["result"]["image"]["name"] == info["examples"][0]["name"]


def test_the_api_refuses_bad_input_with_a_message_and_keeps_serving(trained, client):
    path = trained.test_images()[0]
    upload = lambda name, data, **fields: client.post("/api/jobs", files={"image": (name, data, "image/png")}, data=fields)  # noqa: E731
    refusals = [
        (upload("broken.png", path.read_bytes()[:100]), 400, "cannot read image broken.png"),
        (upload("notes.txt", b"hello"), 400, "notes.txt is not an image this page can read"),
        (upload("big.png", b"x" * 250_000), 413, "big.png is 0.238 MB; the largest upload is 0.191 MB"),
        (client.post("/api/jobs", content=b"x" * 2_000_000, headers={"content-type": "application/octet-stream"}), 413, "the largest upload is"),
        (upload("a.png", path.read_bytes(), question=" "), 400, "the question is empty"),
        (upload("a.png", path.read_bytes(), question=""), 400, "the question is empty"),
        (upload("a.png", path.read_bytes(), experts="edge,nosuch"), 400, "'nosuch' is not one of the ready experts"),
        (client.post("/api/jobs", data={"caption": "true"}), 400, "send one image"),
        (client.post("/api/jobs", data={"example": "0", "caption": "maybe"}), 400, "caption must be true or false"),
        (client.post("/api/jobs", data={"example": "0", "path": "/etc/passwd"}), 400, "unknown field path"),
        (client.post("/api/jobs", data={"example": "99"}), 404, "there is no example 99"),
        (client.post("/api/jobs", data={"example": "../../etc/passwd"}), 400, "example must be an example's number, got '../../etc/passwd'"),
        (client.get("/api/examples/99"), 404, "there is no example 99"),
        (client.get("/api/examples/-1"), 404, "there is no example -1"),
        (client.get("/api/examples/first"), 400, "the request is malformed: example_id:"),
        (client.get("/etc/passwd"), 404, "/etc/passwd: not found"),
        (client.get("/api/jobs/nosuch"), 404, "this request is not known"),
    ]
    for response, status, message in refusals:
        assert response.status_code == status and message in response.json()["error"], response.text
    # A name that looks like a path stays a name: nothing is read from it.
    sneaky = upload("../../../etc/passwd", b"root:x:0:0")
    assert sneaky.status_code == 400 and sneaky.json()["error"].startswith("passwd is not an image")
    for escape in ("/api/examples/../../etc/passwd", "/api/examples/%2e%2e%2fsecret", "/static/../pyproject.toml"):
        assert client.get(escape).status_code == 404
    assert finished(client, upload("a.png", path.read_bytes(), caption="false"))["state"] == "done"


# -- the command ---------------------------------------------------------------------------------

def test_serve_says_in_one_line_why_it_cannot_start(cli, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        busy = cli("serve", "--port", port, check=False)
    assert busy.exit_code == 1
    assert busy.stderr == f"Error: cannot listen on 127.0.0.1:{port}: Address already in use (choose another --port or --host)\n"
    for args, message in [
        (("--checkpoint", tmp_path / "nothing"), f"Error: {tmp_path / 'nothing'} is not a Prismer checkpoint"),
        (("--examples", tmp_path / "none"), f"Error: --examples {tmp_path / 'none'}: not found"),
    ]:
        result = cli("serve", "--port", "0", *args, check=False)
        assert result.exit_code == 1 and result.stderr.splitlines()[-1].startswith(message), result.stderr
