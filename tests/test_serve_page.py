"""The scoring page (`GET /` of `aesr1 serve`) in a real headless browser: Chromium from Debian's
packages (`apt-get install chromium chromium-driver`), driven by Selenium. The test uploads two
images, reads each score and critique off the page, compares the two, and saves a screenshot
(`AESR1_PAGE_SCREENSHOT=path` keeps a copy, as the README's picture was made)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
webdriver = pytest.importorskip("selenium.webdriver")

from conftest import OVERFIT_TARGET  # noqa: E402
from PIL import Image  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="needs Chromium and its driver (Debian: chromium chromium-driver)"
)


def _wait(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def server(overfit_model_dir):
    from aesr1.score import Scorer
    from aesr1.serve import ServeConfig, create_app

    scorer = Scorer(str(overfit_model_dir), mode="expected", max_new_tokens=24, device="cpu")
    app = create_app(scorer, ServeConfig(max_batch_size=4, max_wait_ms=20))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    _wait(lambda: server.started)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(30)


@pytest.fixture
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1200"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_page_scores_and_compares_uploaded_images(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    paths = []
    for name, colour in (("sunset.png", (230, 120, 40)), ("fog.png", (140, 150, 160))):
        path = tmp_path / name
        Image.new("RGB", (56, 56), colour).save(path)
        paths.append(path)
    browser.get(server)
    _wait(lambda: "connecting" not in browser.find_element(By.ID, "model").text)
    assert "expected" in browser.find_element(By.ID, "model").text

    upload = browser.find_element(By.ID, "scoreFiles")
    upload.send_keys("\n".join(str(p) for p in paths))
    scores = lambda: [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#results .score")]  # noqa: E731
    _wait(lambda: len(scores()) == 2 and all("±" in text for text in scores()), timeout=120)
    critiques = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#results .critique")]
    expected_critique = OVERFIT_TARGET.split("<think>")[1].split("</think>")[0]
    assert critiques == [expected_critique, expected_critique]
    for text in scores():
        value = float(text.split("±")[0].strip().split()[-1])
        assert 0.0 <= value <= 1.0, text
    assert "0-1" in browser.find_element(By.ID, "results").text  # the scale is named

    slots = browser.find_elements(By.CSS_SELECTOR, "#pair .drop input[type=file]")
    assert len(slots) == 2
    for slot, path in zip(slots, paths, strict=True):
        slot.send_keys(str(path))
    button = browser.find_element(By.ID, "compare")
    _wait(button.is_enabled)
    button.click()
    verdict = browser.find_element(By.ID, "verdict")
    _wait(lambda: verdict.text.startswith("P(A > B) = "), timeout=120)
    shown = float(verdict.text.removeprefix("P(A > B) = ").split(":")[0])
    import httpx

    files = {
        slot: (path.name, path.read_bytes(), "image/png") for slot, path in zip("ab", paths, strict=True)
    }
    api = httpx.post(f"{server}/v1/compare", files=files, timeout=120).json()
    assert shown == round(api["probability"], 3)

    shot = tmp_path / "page.png"
    browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    keep = os.environ.get("AESR1_PAGE_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)
