"""A real `prismer serve` process and a real headless Chromium, for the page's browser tests
(and tools/serve_screenshot.py, which takes the README's screenshot the same way).

The browser is Debian's ``chromium`` driven through Debian's ``chromium-driver`` (Selenium
is told both paths, so it never tries to download a driver). ``make test`` installs them
with apt when they are missing; :func:`missing_browser` says what is missing otherwise.
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from plugin_helpers import PRISMER
from prismer_core.data.preview import PREVIEW_HEIGHT

CHROMIUM = Path(os.environ.get("PRISMER_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("PRISMER_CHROMEDRIVER", "/usr/bin/chromedriver"))
#: What works on a closed network: no background connections, no sandbox (root), a fresh profile.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
)
PAGE_LINE = "Prismer page: "
QUESTION = "how many shapes are there?"


def preview_size(image_size: tuple[int, int]) -> tuple[int, int]:
    """The size `prismer label --visualize` draws for an image of ``image_size`` (width, height)."""
    width = round(image_size[0] * PREVIEW_HEIGHT / image_size[1])
    return 2 * width + 4, PREVIEW_HEIGHT + 20


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if not missing:
        return None
    return (
        f"the page's browser test needs Debian's chromium and chromium-driver, but {' and '.join(missing)} "
        "is missing: run `make test` as root (it installs them), or `apt-get install chromium chromium-driver` "
        "(or point PRISMER_CHROMIUM / PRISMER_CHROMEDRIVER at a Chromium and its driver)"
    )


@contextmanager
def chromium(profile: Path, size: tuple[int, int] = (1400, 1000)) -> Iterator["selenium.webdriver.Chrome"]:  # noqa: F821
    """A headless Chromium with a fresh profile in ``profile``; quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@contextmanager
def serve_process(args: Sequence[str], env: dict[str, str] | None = None, log: Path | None = None,
                  timeout: float = 240.0) -> Iterator[str]:
    """Run ``prismer serve --port 0 ARGS`` on the loopback; yield its URL once it listens."""
    env = {**(env or os.environ), "PYTHONUNBUFFERED": "1"}
    errors = open(log, "w") if log is not None else subprocess.DEVNULL
    process = subprocess.Popen([PRISMER, "serve", "--port", "0", *args], stdout=subprocess.PIPE, stderr=errors, text=True, env=env)
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True).start()
    try:
        url = _wait_for_url(lines, timeout, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if log is not None:
            errors.close()


def _pump(stream, lines: "queue.Queue[str | None]") -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _wait_for_url(lines: "queue.Queue[str | None]", timeout: float, log: Path | None) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            continue
        if line is None:
            break
        if line.startswith(PAGE_LINE):
            return line[len(PAGE_LINE):].split()[0]
    told = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise AssertionError(f"`prismer serve` did not start within {timeout:.0f} s:\n{told}")
