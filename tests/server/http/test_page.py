"""The web page at / in a real headless Chromium (Debian's chromium and chromium-driver, `make system-deps`),
driven by Selenium, against a real server serving the bundled models/ with a token: every family, then a Gatys
job that runs, shows its progress and previews, and is cancelled. Screenshots go to the test's folder; README's
docs/web.png is the starry_night one, copied by hand."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.conftest import CONTENT_DIR, ROOT, STYLE_DIR, RunningServer, start_server, stop_server

TOKEN = "page-test-token-0123456789"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
)
pytestmark = pytest.mark.skipif(
    not (shutil.which("chromium") and shutil.which("chromedriver")),
    reason="needs Debian's chromium and chromium-driver: make system-deps",
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    env = {
        "STYLIZE_LOCAL_WORKERS": "1",
        "STYLIZE_LOSS_WEIGHTS": "random:0",  # jobs need loss weights; tests never download any
        "STYLIZE_TOKENS": TOKEN,
        "STYLIZE_WARMUP_SIDES": "64",
    }
    server = start_server(ROOT / "models", tmp_path_factory.mktemp("page") / "server.log", env=env)
    yield server
    stop_server(server)


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    options = Options()
    options.binary_location = shutil.which("chromium") or ""
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    yield driver
    driver.quit()


def wait(driver: WebDriver, check: str, timeout_s: float = 180.0) -> None:
    """Until the JavaScript expression `check` is true in the page."""
    WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(lambda d: d.execute_script(f"return {check}"))


def text(driver: WebDriver, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def stylise_with(driver: WebDriver, model: str, shot: Path) -> None:
    Select(driver.find_element(By.ID, "model")).select_by_value(model)
    driver.find_element(By.ID, "run").click()
    wait(driver, f"document.getElementById('result-img').dataset.model === {model!r} && !document.body.dataset.busy")
    assert driver.find_element(By.ID, "error").is_displayed() is False, text(driver, "error")
    assert " ms on the server" in text(driver, "timing")
    assert driver.find_element(By.ID, "download").get_attribute("href").startswith("blob:")
    driver.save_screenshot(str(shot))


def test_the_page_stylises_with_every_family_and_runs_a_job(
    site: RunningServer, browser: WebDriver, tmp_path: Path
) -> None:
    browser.get(site.http_url + "/")
    wait(browser, "!document.getElementById('error').hidden")  # no token yet: the API says why
    assert "UNAUTHENTICATED: this server needs a token" in text(browser, "error")
    browser.save_screenshot(str(tmp_path / "0-no-token.png"))
    browser.find_element(By.ID, "token").send_keys(TOKEN + "\t")  # change: stored, models reloaded
    wait(browser, "document.querySelectorAll('#model option').length === 6")
    assert browser.execute_script("return sessionStorage.getItem('stylize-token')") == TOKEN
    assert browser.find_element(By.ID, "error").is_displayed() is False

    browser.find_element(By.ID, "photo-input").send_keys(str(CONTENT_DIR / "kodim21.png"))
    for number, model in enumerate(("starry_night", "great_wave", "the_scream"), start=1):
        stylise_with(browser, model, tmp_path / f"{number}-{model}.png")

    Select(browser.find_element(By.ID, "model")).select_by_value("painters")
    sliders = browser.find_elements(By.CSS_SELECTOR, ".style-weight")
    assert [s.get_attribute("data-style") for s in sliders] == [
        "impression_sunrise",
        "la_grande_jatte",
        "ia_orana_maria",
        "the_kiss",
    ]
    for slider, value in ((sliders[0], 0.6), (sliders[3], 0.4)):
        browser.execute_script(
            "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'))", slider, value
        )
    assert [o.text for o in browser.find_elements(By.CSS_SELECTOR, "#style-sliders output")][::3] == ["0.60", "0.40"]
    stylise_with(browser, "painters", tmp_path / "4-painters.png")

    Select(browser.find_element(By.ID, "model")).select_by_value("adain")
    assert browser.find_element(By.ID, "run").is_enabled() is False  # arbitrary style needs a painting
    browser.find_element(By.ID, "style-input").send_keys(str(STYLE_DIR / "composition_vii.jpg"))
    browser.find_element(By.ID, "style-input").send_keys(str(STYLE_DIR / "the_kiss.jpg"))
    wait(browser, "document.querySelectorAll('#painting-list li').length === 2")
    stylise_with(browser, "adain", tmp_path / "5-adain.png")

    # A Gatys job: progress, loss terms and previews as they arrive, then cancel.
    Select(browser.find_element(By.ID, "model")).select_by_value("__gatys__")
    for field, value in (("iterations", "2000"), ("preview-every", "2")):
        browser.find_element(By.ID, field).clear()
        browser.find_element(By.ID, field).send_keys(value)
    Select(browser.find_element(By.ID, "job-size")).select_by_value("128")
    browser.find_element(By.ID, "run").click()
    wait(browser, "document.querySelectorAll('#previews img').length >= 2")
    assert text(browser, "job-state") == "RUNNING" and "of 2000" in text(browser, "progress-text")
    # Read in one script: the table is redrawn with every update, so elements found first can go stale.
    script = "return [...document.querySelectorAll('#losses td')].map(td => td.textContent.trim())"
    cells = browser.execute_script(script)
    assert cells and all(cell != "–" for cell in cells)
    browser.save_screenshot(str(tmp_path / "6-gatys-running.png"))
    browser.find_element(By.ID, "cancel").click()
    wait(browser, "document.getElementById('job-state').textContent === 'CANCELLED'")
    assert browser.find_element(By.ID, "cancel").is_displayed() is False
    browser.save_screenshot(str(tmp_path / "7-gatys-cancelled.png"))


def test_a_bad_photo_shows_the_servers_message(site: RunningServer, browser: WebDriver, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    browser.get(site.http_url + "/")
    browser.execute_script("sessionStorage.setItem('stylize-token', arguments[0]); location.reload()", TOKEN)
    wait(browser, "document.querySelectorAll('#model option').length === 6")
    browser.find_element(By.ID, "photo-input").send_keys(str(broken))
    browser.find_element(By.ID, "run").click()
    wait(browser, "!document.getElementById('error').hidden")
    assert text(browser, "error").startswith("INVALID_ARGUMENT: ")
    browser.save_screenshot(str(tmp_path / "bad-photo.png"))
