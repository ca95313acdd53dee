"""The demo in a real browser: headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by selenium)
opens the page, types a prompt in the Generate tab, clicks Generate, waits for the gallery and checks that the
images appeared, then saves a screenshot. Skipped, with the reason, only where no Chromium is installed
(``.ci/run`` installs it).

``UNIMM_DEMO_SCREENSHOT=docs/images/demo.png python -m pytest tests/serving/test_demo_browser.py`` also writes the
screenshot there: that is how the README's picture is made.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="no chromium / chromedriver installed "
                                "(apt-get install chromium chromium-driver)")


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1150"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def test_generate_in_the_browser(demo_url, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 30)
    browser.get(demo_url)
    assert "shapes-janus" in wait.until(seen.visibility_of_element_located((By.ID, "header"))).text
    tab = wait.until(seen.element_to_be_clickable((By.XPATH, "//button[@role='tab'][contains(., 'Generate')]")))
    tab.click()
    prompt = wait.until(seen.visibility_of_element_located((By.CSS_SELECTOR, "#prompt textarea")))
    prompt.send_keys("a red circle")
    browser.find_element(By.ID, "generate-button").click()
    wait.until(lambda page: len(page.find_elements(By.CSS_SELECTOR, "#gallery img")) == 4)  # the default count
    images = browser.find_elements(By.CSS_SELECTOR, "#gallery img")
    assert all(browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", im) == 32
               for im in images)  # loaded, at the model's image size
    shot = tmp_path / "demo.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 0
    if os.environ.get("UNIMM_DEMO_SCREENSHOT"):
        target = Path(os.environ["UNIMM_DEMO_SCREENSHOT"])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target)
