"""The search page of ``vsekit serve`` driven in real headless Chromium (Debian's ``chromium`` and
``chromium-driver``, installed by ``.ci/run``): type a query, check the grid, click a result, go back,
switch to captions, page, upload an image; the page's state is in the URL. Saves a screenshot as a test
artifact (copied to ``$VSEKIT_ARTIFACTS`` when set; ``VSEKIT_SCREENSHOT=docs/search_page.png`` also writes
the README's screenshot).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

pytest.importorskip("fastapi", reason="vsekit serve needs the 'serve' extra")
pytest.importorskip("pyarrow", reason="search indexes need pyarrow")
selenium = pytest.importorskip("selenium", reason="the browser test needs selenium (the dev extra)")

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from .test_serve import scene_collection, start_server, stop_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.skip("headless Chromium is not installed (apt-get install chromium chromium-driver; .ci/run does it)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,760",
                "--disable-extensions", "--no-first-run", "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(tmp_path_factory, learning_seed):
    scenes = scene_collection(tmp_path_factory, learning_seed)
    proc, url = start_server(scenes["index_dir"])
    yield scenes, url
    stop_server(proc)


def state(driver) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(driver.current_url).query).items()}


def results(driver) -> list[str]:
    return [b.get_attribute("data-id") for b in driver.find_elements(By.CSS_SELECTOR, "#results li button")]


def wait_for(driver, predicate, what: str, timeout: float = 15):
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: predicate(d), message=what)


def settled(driver) -> bool:
    """The grid is drawn and no search is in flight."""
    return driver.find_element(By.ID, "results").get_attribute("aria-busy") is None and bool(results(driver))


def test_search_page_in_headless_chromium(browser, server, tmp_path):
    scenes, url = server
    d = browser
    d.get(url + "/")
    assert d.title == "vsekit search"
    box = d.find_element(By.ID, "q")
    box.send_keys("a blue car", Keys.ENTER)
    wait_for(d, lambda d: settled(d) and state(d).get("q") == "a blue car", "results of the typed query")
    blue = scenes["by_color"]["blue"]
    assert results(d)[0] == blue
    first = d.find_element(By.CSS_SELECTOR, "#results li button")
    wait_for(d, lambda d: d.execute_script("return arguments[0].querySelector('img').naturalWidth", first) > 0, "thumbnail loaded")
    assert "blue" in first.text and first.find_element(By.CSS_SELECTOR, ".score").text.startswith("0.")
    screenshot = tmp_path / "search_page.png"
    d.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 5000
    for env in ("VSEKIT_ARTIFACTS",):
        if os.environ.get(env):
            Path(os.environ[env]).mkdir(parents=True, exist_ok=True)
            shutil.copy(screenshot, Path(os.environ[env]) / "search_page.png")
    if os.environ.get("VSEKIT_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["VSEKIT_SCREENSHOT"])

    # click a result: the page searches with it and the URL says so
    clicked = results(d)[1]
    d.find_elements(By.CSS_SELECTOR, "#results li button")[1].click()
    wait_for(d, lambda d: state(d).get("item") == clicked and settled(d) and clicked not in results(d), "item search")
    assert "q" not in state(d) and d.find_element(By.ID, "query-label").text.endswith(clicked)
    assert len(results(d)) == len(scenes["by_color"]) - 1
    # back: the typed query again, from the URL
    d.back()
    wait_for(d, lambda d: state(d).get("q") == "a blue car" and settled(d) and results(d)[0] == blue, "back to the query")
    assert d.find_element(By.ID, "q").get_attribute("value") == "a blue car"
    # captions instead of images
    d.find_element(By.CSS_SELECTOR, 'input[name="target"][value="text"]').click()
    wait_for(d, lambda d: state(d).get("target") == "text" and settled(d) and "#" in results(d)[0], "caption results")
    assert d.find_element(By.CSS_SELECTOR, "#results li .text").text == "a photo of a blue car"
    # pagination, from a URL with k=3
    d.get(url + "/?q=a+green+car&k=3")
    wait_for(d, lambda d: settled(d) and len(results(d)) == 3, "first page")
    page1 = results(d)
    d.find_element(By.ID, "next").click()
    wait_for(d, lambda d: state(d).get("page") == "2" and settled(d) and results(d) != page1, "second page")
    assert d.find_element(By.CSS_SELECTOR, "#results li .rank").text == "#4" and not set(page1) & set(results(d))
    assert d.find_element(By.ID, "prev").is_enabled()
    # search with an uploaded image
    red = scenes["by_color"]["red"]
    d.find_element(By.ID, "image").send_keys(str(scenes["root"] / red))
    wait_for(d, lambda d: settled(d) and results(d)[0] == red, "upload results")
    assert "your image" in d.find_element(By.ID, "query-label").text
    # an error is shown on the page, not as a broken grid
    d.get(url + "/?item=no-such-item")
    wait_for(d, lambda d: "Error" in d.find_element(By.ID, "status").text, "error message")
    assert "no item" in d.find_element(By.ID, "status").text and not results(d)
    # nothing was blocked by the Content-Security-Policy, no script error
    problems = [e for e in d.get_log("browser") if e["level"] == "SEVERE" and "no-such-item" not in e["message"]]
    assert not problems, problems
