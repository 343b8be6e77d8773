"""The live page in a real browser: headless Chromium (selenium + chromedriver) on a run folder
made by hand (tests/test_view.make_run: demo DICOMs, raw tables, no training).

Moves the score threshold with the keyboard as a person would and waits for the shown mAP to
become what kit.score gives for the slider's new value; walks to the next film with the arrow
key; saves a screenshot (to tmp and to /tmp/view_screenshot.png, the README's picture).
Skipped, saying why, where Chromium, chromedriver or selenium is missing.
"""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from kit.score.metric import score_dataset
from kit.score.postprocess import PostProcess
from test_view import TUNED, Served, kit_figures, make_run

SCREENSHOT = Path("/tmp/view_screenshot.png")
BROWSERS = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
DRIVERS = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")


def _found(candidates: tuple[str, ...], name: str) -> str | None:
    return next((p for p in candidates if Path(p).is_file()), None) or shutil.which(name)


def browser_or_skip():
    """A headless Chromium driven by selenium, or pytest.skip with the reason."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed "
                                    "(pip install -r requirements.txt)")
    from selenium.webdriver.chrome.service import Service

    binary, driver = _found(BROWSERS, "chromium"), _found(DRIVERS, "chromedriver")
    if binary is None or driver is None:
        pytest.skip(f"no {'Chromium' if binary is None else 'chromedriver'} installed "
                    "(apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1440,900", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    try:
        return webdriver.Chrome(service=Service(driver), options=options)
    except Exception as exc:            # a broken install: say so instead of failing the suite
        pytest.skip(f"Chromium does not start here: {str(exc).splitlines()[0]}")


def expected_map(run: Path, post: PostProcess) -> str:
    gt, kept, _ = kit_figures(run, post)
    return f"{score_dataset(gt, kept).map:.4f}"


def test_page_in_chromium_moves_the_threshold_and_shows_the_kit_map(in_tmp, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser = browser_or_skip()
    served = Served(make_run(in_tmp, n_train=24, n_test=6, size=256))
    try:
        browser.get(f"http://127.0.0.1:{served.port}/")
        wait = WebDriverWait(browser, 30)
        shown = lambda: browser.find_element(By.ID, "map").text   # noqa: E731
        wait.until(lambda _: shown() == expected_map(served.run, TUNED))
        wait.until(lambda b: b.execute_script("return S.img !== null"))
        first = browser.find_element(By.ID, "info").text

        slider = browser.find_element(By.ID, "s-score_threshold")
        slider.click()                                   # focus; a click may move it too
        for _ in range(25):
            slider.send_keys(Keys.ARROW_RIGHT)
        value = float(slider.get_attribute("value"))
        moved = replace(TUNED, score_threshold=round(value, 2))
        want = expected_map(served.run, moved)
        assert want != expected_map(served.run, TUNED), "pick a run where the threshold matters"
        wait.until(lambda _: shown() == want)
        assert browser.find_element(By.ID, "n-score_threshold").get_attribute("value") \
            == slider.get_attribute("value")
        assert "score_threshold" in browser.find_element(By.ID, "changed").text

        browser.find_element(By.ID, "film").click()      # leave the slider, walk the films
        browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
        wait.until(lambda b: b.find_element(By.ID, "info").text != first)
        assert "(2/24)" in browser.find_element(By.ID, "info").text
        wait.until(lambda b: b.execute_script("return S.img !== null"))
        assert not browser.find_element(By.ID, "msg").text      # no error on the page

        Select(browser.find_element(By.ID, "cls")).select_by_visible_text("Lung Opacity")
        wait.until(lambda b: "Lung Opacity" in b.find_element(By.ID, "info").text)
        wait.until(lambda b: b.execute_script("return S.img !== null"))
        for path in (tmp_path / "view.png", SCREENSHOT):
            assert browser.save_screenshot(str(path)), path
        assert (tmp_path / "view.png").stat().st_size > 10_000
        # the page's settings are the kit's: saving them writes what the figures used
        browser.find_element(By.ID, "save").click()
        wait.until(lambda b: "Saved" in b.find_element(By.ID, "msg").text)
        assert PostProcess.from_json(served.run / "postprocess.json") == moved
        assert (served.run / "postprocess.json.bak").is_file()
    finally:
        browser.quit()
        served.close()
