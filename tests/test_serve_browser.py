"""`prismer serve` as a user meets it: a real server process on a free loopback port, driven
by Debian's Chromium (headless, through chromium-driver), and hit by 20 requests at once.

The browser test does not skip: without chromium and chromium-driver it fails, saying what to
install (`make test` installs them as root).
"""

from __future__ import annotations

import base64
import io
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.support.ui import WebDriverWait

from serve_helpers import QUESTION, chromium, missing_browser, preview_size, serve_process

QUEUE_SIZE = 4


@pytest.fixture(scope="module")
def trained(trained):
    return trained


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    """`prismer serve --checkpoint RUN` with the demo's test images as examples; yields its URL."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    args = ["--checkpoint", str(trained.run), "--examples", str(trained.demo / "images" / "test"), "--queue-size", str(QUEUE_SIZE)]
    with serve_process(args, log=log) as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    problem = missing_browser()
    if problem:
        pytest.fail(problem, pytrace=False)
    with chromium(tmp_path_factory.mktemp("chromium-profile")) as driver:
        yield driver


def until(driver, condition, what: str, timeout: float = 180):
    """Wait for ``condition(driver)``; on time-out, fail saying what the page showed."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)
    except TimeoutException:
        shown = {name: text(driver, name) for name in ("status", "error", "caption", "answer")}
        raise AssertionError(f"the page did not show {what} within {timeout} s; it shows {shown}") from None


def text(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text.strip()


def panel_images(driver) -> dict[str, Image.Image]:
    """Each shown panel's PNG, decoded from the page's own <img> source.

    Read in one script so that a redraw between two WebDriver calls cannot leave a stale element.
    """
    shown = driver.execute_script(
        "return [...document.querySelectorAll('#panels figure')]"
        ".filter(f => f.querySelector('img')).map(f => [f.dataset.expert, f.querySelector('img').src])"
    )
    pictures = {}
    for expert, source in shown:
        assert source.startswith("data:image/png;base64,")
        picture = Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1])))
        picture.load()
        assert picture.format == "PNG"
        pictures[expert] = picture
    return pictures


def test_the_page_in_chromium_shows_panels_caption_and_answers(trained, server, browser, cli, tmp_path):
    image = trained.test_images()[0]
    browser.get(server)
    until(browser, lambda d: "checkpoint" in text(d, "info") and d.find_elements(By.CSS_SELECTOR, "#examples img"), "the checkpoint and examples")
    assert str(trained.checkpoint) in text(browser, "info") and "edge" in text(browser, "info")

    browser.find_element(By.CSS_SELECTOR, "input[name=expert][value=ocr]").click()  # draw OCR too
    browser.find_element(By.ID, "question").send_keys(QUESTION)
    browser.find_element(By.ID, "file-input").send_keys(str(image))
    until(browser, lambda d: text(d, "caption") and text(d, "answer") and len(panel_images(d)) == 2, "a caption, an answer and 2 panels")

    caption = text(browser, "caption")
    assert cli("caption", "--checkpoint", trained.run, image).stdout.strip() == f"{image}: {caption}"
    assert text(browser, "answer") == cli("vqa", image, QUESTION, "--checkpoint", trained.run).stdout.strip()
    pictures = panel_images(browser)
    assert sorted(pictures) == ["edge", "ocr"]
    for picture in pictures.values():
        assert picture.size == preview_size((64, 64))
    shown = browser.execute_script("return [...document.querySelectorAll('#panels img')].map(i => i.naturalWidth)")
    assert shown == [preview_size((64, 64))[0]] * 2  # the browser decoded them too
    stages = text(browser, "timings")
    for stage in ("expert edge", "expert ocr", "caption (beam 3)", "answer (beam 3)", "total"):
        assert stage in stages
    assert "the model ran: edge" in text(browser, "ran") and "panels drawn: edge, ocr" in text(browser, "ran")

    browser.find_element(By.ID, "answers").send_keys("one\ntwo\nthree")
    browser.find_element(By.ID, "ask").click()
    until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#ranking tbody tr")) == 3, "3 ranked answers")
    rows = [row.text.rsplit(" ", 1) for row in browser.find_elements(By.CSS_SELECTOR, "#ranking tbody tr")]
    scores = [float(score) for _, score in rows]
    assert sorted(answer for answer, _ in rows) == ["one", "three", "two"] and scores == sorted(scores, reverse=True)
    assert text(browser, "answer") == rows[0][0] and text(browser, "caption") == caption  # asking keeps the caption

    screenshot = tmp_path / "page.png"
    assert browser.save_screenshot(str(screenshot))
    assert Image.open(screenshot).size[0] >= 1000

    browser.find_element(By.CSS_SELECTOR, "input[name=expert][value=ocr]").click()  # untick OCR: the panels redraw
    until(browser, lambda d: sorted(panel_images(d)) == ["edge"], "the panels without OCR")
    assert text(browser, "caption") == caption and text(browser, "answer") == rows[0][0]

    browser.find_element(By.ID, "question").clear()
    browser.find_element(By.ID, "ask").click()
    until(browser, lambda d: "the question is empty" in text(d, "error"), "the empty-question message")

    broken = tmp_path / "broken.png"
    broken.write_bytes(image.read_bytes()[:200])  # a PNG cut short
    browser.find_element(By.ID, "file-input").send_keys(str(broken))
    until(browser, lambda d: "cannot read image broken.png" in text(d, "error"), "the corrupt-upload message")
    assert text(browser, "status") == ""

    browser.find_element(By.CSS_SELECTOR, "#examples button").click()  # the server still serves
    until(browser, lambda d: text(d, "error") == "" and text(d, "status").startswith("Done"), "an example's result")
    assert text(browser, "caption") and text(browser, "image-name") == sorted((trained.demo / "images" / "test").iterdir())[0].name

    browser.execute_async_script(DROP_FILE, image.read_bytes().hex(), "dropped.png")  # drag and drop
    until(browser, lambda d: text(d, "image-name") == "dropped.png" and text(d, "status").startswith("Done"), "the dropped image's result")
    assert text(browser, "caption") == caption


#: Drops a file (hex bytes, name) on the page's drop zone, as a drag from the desktop would.
DROP_FILE = """
const [hex, name, done] = arguments;
const bytes = new Uint8Array(hex.match(/../g).map((h) => parseInt(h, 16)));
const transfer = new DataTransfer();
transfer.items.add(new File([bytes], name, {type: "image/png"}));
document.getElementById("drop-zone").dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
done();
"""


def test_twenty_concurrent_requests_are_each_answered_or_told_to_wait(trained, server):
    """20 clients at once into a queue of 4: each is either queued (and answered) or told the
    server is busy (503, Retry-After), and then tries again, until all 20 have their answer."""
    examples = len(list((trained.demo / "images" / "test").iterdir()))
    deadline = time.monotonic() + 300

    def client(k: int) -> dict:
        record = {"busy": 0, "ahead": [], "caption": None}
        with httpx.Client(base_url=server, timeout=60) as http:
            while time.monotonic() < deadline:
                response = http.post("/api/jobs", data={"example": str(k % examples), "experts": "edge,ocr"})
                if response.status_code == 503:
                    assert "the server is busy" in response.json()["error"]
                    record["busy"] += 1
                    time.sleep(min(int(response.headers["retry-after"]), 3))
                    continue
                assert response.status_code == 202, response.text
                job = response.json()
                while job["state"] in ("waiting", "running"):
                    record["ahead"].append(job["ahead"])
                    assert time.monotonic() < deadline, "a queued request was never answered"
                    time.sleep(0.1)
                    job = http.get(f"/api/jobs/{job['id']}").json()
                assert job["state"] == "done", job
                record["caption"] = job["result"]["caption"]
                assert job["result"]["experts_ran"] == ["edge", "ocr"]
                return record
        raise AssertionError(f"request {k} was refused until the deadline")

    with ThreadPoolExecutor(max_workers=20) as pool:
        records = list(pool.map(client, range(20)))

    assert len(records) == 20 and all(r["caption"] for r in records)  # none lost
    assert sum(r["busy"] for r in records) > 0  # the bound was reached, and said so
    ahead = [a for r in records for a in r["ahead"]]
    assert 0 < max(ahead) <= QUEUE_SIZE  # some waited in the queue, told how many were ahead
    for k, record in enumerate(records):  # the same image got the same caption whenever it ran
        assert record["caption"] == records[k % examples]["caption"]
    info = httpx.get(f"{server}api/info", timeout=30).json()
    assert info["queue"] == {"waiting": 0, "running": 0, "max_waiting": QUEUE_SIZE}
