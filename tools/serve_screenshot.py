"""Take docs/serve.png: the page of `prismer serve` in headless Chromium, as a user sees it.

Run after `make demo`, from the repository root (it needs Debian's chromium and
chromium-driver, which `make test` installs):

    .venv/bin/python tools/serve_screenshot.py [--checkpoint demo_out/runs/experts] [--out docs/serve.png]

It starts `prismer serve --checkpoint CHECKPOINT` on a free loopback port, picks the first
example image that has a printed word (from the demo's test manifest the page offers), asks
what is written there, waits for the caption, the answer and the expert panels, and saves the
page. The server and the browser are the ones the browser test uses (tests/serve_helpers.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from serve_helpers import chromium, missing_browser, serve_process  # noqa: E402


def pick_question(info: dict) -> tuple[int, str]:
    """(example id, question): the first offered image with a question about a printed word."""
    names = {example["name"]: example["id"] for example in info["examples"]}
    manifest = Path(info.get("examples_from") or "")
    if manifest.suffix == ".jsonl" and manifest.is_file():
        for line in manifest.read_text().splitlines():
            row = json.loads(line)
            if row.get("type") == "word" and Path(row["image"]).name in names:
                return names[Path(row["image"]).name], row["question"]
    return 0, "how many shapes are there?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="demo_out/runs/experts")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "serve.png")
    parser.add_argument("--size", default="1400x1100", help="window WIDTHxHEIGHT")
    args = parser.parse_args()
    problem = missing_browser()
    if problem:
        print(problem, file=sys.stderr)
        return 1
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as scratch, \
            serve_process(["--checkpoint", args.checkpoint], log=Path(scratch) / "serve.log") as url, \
            chromium(Path(scratch) / "profile", (width, height)) as browser:
        browser.get(url)
        wait = WebDriverWait(browser, 300, poll_frequency=0.3)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#examples img"))
        info = browser.execute_script("return info")
        example, question = pick_question(info)
        browser.find_element(By.ID, "question").send_keys(question)
        browser.find_element(By.CSS_SELECTOR, f"#examples button[data-example='{example}']").click()
        expected = len(info["default_experts"])
        try:
            wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("Done")
                       and len(d.find_elements(By.CSS_SELECTOR, "#panels img")) == expected)
        except TimeoutException:
            shown = {name: browser.find_element(By.ID, name).text for name in ("status", "error", "caption", "answer")}
            print(f"the page did not finish: it shows {shown}", file=sys.stderr)
            return 1
        time.sleep(0.5)  # let the panel images paint
        args.out.parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(args.out))
        caption = browser.find_element(By.ID, "caption").text
        answer = browser.find_element(By.ID, "answer").text
    print(f"{args.out}: example {example}, caption {caption!r}, {question!r} -> {answer!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
