"""The search page of ``vsekit serve`` driven in real headless Chromium (Debian's ``chromium`` and
``chromium-driver``, installed by ``.ci/run``): type a query, check the grid, open a result's detail view (by a
click and by URL; closed by Escape and Back), search for more like it, switch to captions grouped by image, page,
upload an image and go Back and Forward over it; the page's state is in the URL. Served: the scenes of
test_serve.py with three captions each, indexed with the model exported as a model folder (named in the footer).

Saves a screenshot of each view as a test artifact (copied to ``$VSEKIT_ARTIFACTS`` when set):
``VSEKIT_SCREENSHOT=docs/search_page.png`` also writes the documentation's screenshots, that one and
``docs/search_page_{detail,captions,upload}.png`` next to it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit
from urllib.request import urlopen

import pytest

pytest.importorskip("fastapi", reason="vsekit serve needs the 'serve' extra")
pytest.importorskip("pyarrow", reason="search indexes need pyarrow")
selenium = pytest.importorskip("selenium", reason="the browser test needs selenium (the dev extra)")

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from .test_serve import MODEL_FOLDER, MODEL_METRICS, NUM_COLORS, captioned_collection, start_server, stop_server

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
    scenes = captioned_collection(tmp_path_factory, learning_seed)
    proc, url = start_server(scenes["index_dir"])
    yield scenes, url
    stop_server(proc)


def state(driver) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(driver.current_url).query).items()}


def results(driver) -> list[str]:
    return [b.get_attribute("data-id") for b in driver.find_elements(By.CSS_SELECTOR, "#results li button")]


def wait_for(driver, predicate, what: str, timeout: float = 15):
    # a predicate may read the grid while the page redraws it: an element gone stale means "not yet", so poll again
    wait = WebDriverWait(driver, timeout, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,))
    return wait.until(lambda d: predicate(d), message=what)


def settled(driver) -> bool:
    """The grid is drawn and no search is in flight."""
    return driver.find_element(By.ID, "results").get_attribute("aria-busy") is None and bool(results(driver))


def detail_open(driver) -> bool:
    return driver.execute_script("return document.getElementById('detail').open")


def detail_shows(driver, item: str, captions: list[str]) -> bool:
    """The detail view is open on ``item``, its captions and its image drawn."""
    if not detail_open(driver) or state(driver).get("detail") != item:
        return False
    shown = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#detail-captions li span")]
    return shown == captions and driver.execute_script("return document.getElementById('detail-image').naturalWidth") > 0


def queries(url: str) -> int:
    """Searches the service has answered (a page drawn from what the browser kept sends none)."""
    with urlopen(url + "/api/stats", timeout=10) as r:
        return json.load(r)["queries"]


def screenshot(driver, tmp_path: Path, view: str = "") -> None:
    """Save the page as ``search_page[_view].png``: a test artifact, and a documentation screenshot next to
    ``$VSEKIT_SCREENSHOT`` when it is set."""
    name = f"search_page{'_' + view if view else ''}.png"
    path = tmp_path / name
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 5000
    if os.environ.get("VSEKIT_ARTIFACTS"):
        Path(os.environ["VSEKIT_ARTIFACTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(os.environ["VSEKIT_ARTIFACTS"]) / name)
    if os.environ.get("VSEKIT_SCREENSHOT"):
        doc = Path(os.environ["VSEKIT_SCREENSHOT"])
        shutil.copy(path, doc if not view else doc.with_name(f"{doc.stem}_{view}{doc.suffix}"))


def escape(driver) -> None:
    ActionChains(driver).send_keys(Keys.ESCAPE).perform()


def no_console_errors(driver, *allowed: str) -> None:
    """Nothing was blocked by the Content-Security-Policy, no script error."""
    problems = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and not any(a in e["message"] for a in allowed)]
    assert not problems, problems


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
    # the footer names the model folder and its test metrics, not its checkpoint file
    metric = "test mR " + f"{MODEL_METRICS['test_mR']:.2f}"
    wait_for(d, lambda d: d.find_element(By.ID, "model-info").text == f"{MODEL_FOLDER} · {metric}", "the model in the footer")
    assert f"{NUM_COLORS + 3 * NUM_COLORS} items" in d.find_element(By.TAG_NAME, "footer").text
    # the clamped caption: three lines, not a sliver of a fourth
    clamp = d.execute_script(
        "const e = arguments[0].querySelector('.caption'); const s = getComputedStyle(e);"
        "return {h: e.getBoundingClientRect().height, lh: parseFloat(s.lineHeight), scroll: e.scrollHeight, client: e.clientHeight};",
        first,
    )
    assert clamp["scroll"] > clamp["client"] + clamp["lh"], clamp  # the long caption is cut...
    assert 3 * clamp["lh"] - 0.5 <= clamp["h"] <= 3 * clamp["lh"] + 0.5, clamp  # ...after exactly three lines
    screenshot(d, tmp_path)
    no_console_errors(d)


def test_detail_view_more_like_this_escape_and_back(browser, server, tmp_path):
    scenes, url = server
    d = browser
    d.get(url + "/?q=a+blue+car")
    wait_for(d, settled, "results")
    before = results(d)
    clicked = before[1]
    d.find_elements(By.CSS_SELECTOR, "#results li button")[1].click()
    wait_for(d, lambda d: detail_shows(d, clicked, scenes["captions"][clicked]), "the detail view")
    assert state(d).get("q") == "a blue car" and results(d) == before  # over the results, which stay
    assert d.find_element(By.ID, "detail-title").text == clicked.split("/")[-1]
    meta = d.find_element(By.ID, "detail-meta").text
    assert clicked in meta and ("KiB" in meta or "bytes" in meta)
    assert d.find_element(By.ID, "detail-open").get_attribute("href").endswith("/image")
    wait_for(d, lambda d: "96 × 96" in d.find_element(By.ID, "detail-dimensions").text, "the image's size")
    screenshot(d, tmp_path, "detail")
    # Escape closes it (going Back), Forward opens it again, Back closes it
    escape(d)
    wait_for(d, lambda d: not detail_open(d) and "detail" not in state(d), "closed by Escape")
    assert results(d) == before and state(d).get("q") == "a blue car"
    d.forward()
    wait_for(d, lambda d: detail_shows(d, clicked, scenes["captions"][clicked]), "Forward: the detail view again")
    d.back()
    wait_for(d, lambda d: not detail_open(d) and "detail" not in state(d), "closed by Back")
    # more like this: a search with the item
    d.find_elements(By.CSS_SELECTOR, "#results li button")[1].click()
    wait_for(d, lambda d: detail_shows(d, clicked, scenes["captions"][clicked]), "the detail view")
    d.find_element(By.ID, "more-like-this").click()
    wait_for(d, lambda d: state(d).get("item") == clicked and settled(d) and clicked not in results(d), "more like this")
    assert not detail_open(d) and "q" not in state(d) and "detail" not in state(d)
    assert d.find_element(By.ID, "query-label").text.endswith(clicked) and len(results(d)) == NUM_COLORS - 1
    d.back()  # the detail view over the first results
    wait_for(d, lambda d: detail_shows(d, clicked, scenes["captions"][clicked]) and results(d) == before, "back to the detail")
    d.back()
    wait_for(d, lambda d: not detail_open(d) and state(d) == {"q": "a blue car"} and results(d) == before, "back to the query")
    assert d.find_element(By.ID, "q").get_attribute("value") == "a blue car"
    # reached by its URL alone, closed by Escape: the URL loses it, the page stays
    red = scenes["by_color"]["red"]
    d.get(url + "/?detail=" + quote(red))
    wait_for(d, lambda d: detail_shows(d, red, scenes["captions"][red]), "the detail view from its URL")
    d.find_element(By.CSS_SELECTOR, "#detail-captions li button").click()  # search with its first caption
    wait_for(d, lambda d: state(d).get("item") == f"{red}#0" and settled(d) and results(d)[0] == red, "search with a caption")
    d.back()
    wait_for(d, lambda d: detail_shows(d, red, scenes["captions"][red]), "back to the detail view")
    escape(d)
    wait_for(d, lambda d: not detail_open(d) and state(d) == {}, "closed: the URL without it")
    no_console_errors(d)


def test_captions_are_grouped_by_image(browser, server, tmp_path):
    scenes, url = server
    d = browser
    d.get(url + "/?q=a+blue+car")
    wait_for(d, settled, "results")
    d.find_element(By.CSS_SELECTOR, 'input[name="target"][value="text"]').click()
    wait_for(d, lambda d: state(d).get("target") == "text" and settled(d) and d.find_elements(By.CSS_SELECTOR, ".group"), "grouped captions")
    ids = results(d)
    assert len(ids) == len(set(ids)) == NUM_COLORS and set(ids) == set(scenes["captions"])  # each image once
    blue = scenes["by_color"]["blue"]
    assert ids[0] == blue
    for card in d.find_elements(By.CSS_SELECTOR, "#results li button"):
        image = card.get_attribute("data-id")
        shown = [m.get_attribute("textContent") for m in card.find_elements(By.CSS_SELECTOR, ".match")]
        assert shown and set(shown) <= set(scenes["captions"][image]), (image, shown)
        assert card.find_element(By.TAG_NAME, "img").get_attribute("src").split("/api/items/")[1].startswith(quote(image))
    assert "blue" in d.find_element(By.CSS_SELECTOR, "#results li .match").text
    assert "images by their captions 1–8" in d.find_element(By.ID, "status").text
    screenshot(d, tmp_path, "captions")
    # a card opens its image, with all its captions
    d.find_element(By.CSS_SELECTOR, "#results li button").click()
    wait_for(d, lambda d: detail_shows(d, blue, scenes["captions"][blue]), "the image of the captions")
    escape(d)
    # closed, and its history entry left (closing goes Back): navigating before that could race with it
    wait_for(d, lambda d: not detail_open(d) and "detail" not in state(d), "closed")
    # pagination counts images: pages of 3, none repeated
    d.get(url + "/?q=a+green+car&target=text&k=3")
    wait_for(d, lambda d: settled(d) and len(results(d)) == 3, "first page of images by captions")
    seen = results(d)
    for page in (2, 3):
        d.find_element(By.ID, "next").click()
        shown = {"page": str(page), "seen": set(seen)}
        wait_for(d, lambda d, shown=shown: state(d).get("page") == shown["page"] and settled(d) and not set(results(d)) & shown["seen"],
                 f"page {page}")  # fmt: skip
        seen += results(d)
    assert len(seen) == len(set(seen)) == NUM_COLORS and not d.find_element(By.ID, "next").is_enabled()
    no_console_errors(d)


def test_pages_uploads_back_forward_and_errors(browser, server, tmp_path):
    scenes, url = server
    d = browser
    # pagination, from a URL with k=3
    d.get(url + "/?q=a+green+car&k=3")
    wait_for(d, lambda d: settled(d) and len(results(d)) == 3, "first page")
    page1 = results(d)
    d.find_element(By.ID, "next").click()
    wait_for(d, lambda d: state(d).get("page") == "2" and settled(d) and results(d) != page1, "second page")
    assert d.find_element(By.CSS_SELECTOR, "#results li .rank").text == "#4" and not set(page1) & set(results(d))
    assert d.find_element(By.ID, "prev").is_enabled()
    # search with an uploaded image: the URL names the upload, and the page says what it cannot share
    d.get(url + "/")
    red = scenes["by_color"]["red"]
    d.find_element(By.ID, "image").send_keys(str(scenes["root"] / red))
    wait_for(d, lambda d: settled(d) and results(d)[0] == red and "upload" in state(d), "upload results")
    upload = state(d)["upload"]
    assert "your photo" in d.find_element(By.ID, "query-label").text and "q" not in state(d) and "page" not in state(d)
    note = d.find_element(By.ID, "share-note")
    assert note.is_displayed() and "cannot carry your photo" in note.text and "in this tab only" in note.text
    best = d.find_element(By.ID, "share-best")
    wait_for(d, lambda d: best.is_displayed(), "a link to results like the best match")
    assert parse_qs(urlsplit(best.get_attribute("href")).query)["item"] == [red]
    screenshot(d, tmp_path, "upload")
    asked = queries(url)
    # Back and Forward over the upload: its results again, without sending the photo again
    d.find_element(By.ID, "q").send_keys("a yellow car", Keys.ENTER)
    wait_for(d, lambda d: state(d).get("q") == "a yellow car" and settled(d), "a text query after the upload")
    d.back()
    wait_for(d, lambda d: state(d).get("upload") == upload and settled(d) and results(d)[0] == red, "Back: the upload's results")
    assert "your photo" in d.find_element(By.ID, "query-label").text and queries(url) == asked + 1
    d.forward()
    wait_for(d, lambda d: state(d).get("q") == "a yellow car" and settled(d), "Forward: the text query")
    # leaving the page and coming Back: the photo and its results are kept in this tab
    d.get(url + "/?q=a+pink+car")
    wait_for(d, lambda d: state(d).get("q") == "a pink car" and settled(d), "another page")
    d.back()
    wait_for(d, lambda d: state(d).get("q") == "a yellow car" and settled(d), "Back: the text query")
    asked = queries(url)
    d.back()
    wait_for(d, lambda d: state(d).get("upload") == upload and settled(d) and results(d)[0] == red, "Back into the page: the upload")
    wait_for(d, lambda d: d.find_element(By.ID, "query-image").get_attribute("naturalWidth") != "0", "the photo shown again")
    assert queries(url) == asked and "your photo" in d.find_element(By.ID, "query-label").text
    # the captions of the same photo: sent again (another search), and the Back to the images is not
    d.find_element(By.CSS_SELECTOR, 'input[name="target"][value="text"]').click()
    wait_for(d, lambda d: state(d).get("target") == "text" and settled(d) and results(d)[0] == red, "the photo's captions")
    # a shared link of an upload: another tab has no photo, and the page says why
    d.execute_script("sessionStorage.clear()")
    d.get(url + f"/?upload={upload}")
    wait_for(d, lambda d: "cannot carry a photo" in d.find_element(By.ID, "status").text, "a shared upload link")
    assert not results(d)
    # an error is shown on the page, not as a broken grid
    d.get(url + "/?item=no-such-item")
    wait_for(d, lambda d: "Error" in d.find_element(By.ID, "status").text, "error message")
    assert "no item" in d.find_element(By.ID, "status").text and not results(d)
    no_console_errors(d, "no-such-item")
