"""The demo page in a real headless Chromium (Debian's chromium + chromedriver, via Selenium).

Walks the seed's story: load, bulk-load, read, pause the worker and watch the streaming fields
run out (3 s field TTL) while the batch fields stay, inspect, reset. Screenshots go to
test-artifacts/.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pytest

from feast_redis_hexpire.demo import repo as demo_repo
from feast_redis_hexpire.demo.app import create_app
from feast_redis_hexpire.demo.core import Demo
from feast_redis_hexpire.demo.server import ServerThread
from feast_redis_hexpire.local_redis import LocalRedis

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.browser

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
STREAM_TTL = 3


@pytest.fixture(scope="module")
def page_url(tmp_path_factory):
    with LocalRedis("redis") as server:
        repo = demo_repo.write_demo_repo(
            tmp_path_factory.mktemp("browser") / "repo",
            server.connection_string,
            stream_field_ttl_seconds=STREAM_TTL,
        )
        demo = Demo.create(repo, users_per_tick=10, interval=0.5, worker_seed=1)
        demo.worker.start()
        try:
            with ServerThread(create_app(demo)) as url:
                yield url, server.client()
        finally:
            demo.worker.stop()


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("Debian chromium and chromium-driver are not installed")
    profile = tempfile.mkdtemp(prefix="demo-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 f"--user-data-dir={profile}", "--window-size=1280,1900"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def shot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"demo-{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    return path


def text(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def wait_text(driver, element_id: str, needle: str, timeout: float = 30) -> str:
    WebDriverWait(driver, timeout, 0.1).until(lambda d: needle in d.find_element(By.ID, element_id).text)
    return text(driver, element_id)


def texts(driver, selector: str) -> list[str]:
    """Texts of the matching elements, read in one script (the page re-renders every second)."""
    script = "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent)"
    return driver.execute_script(script, selector)


def table(driver, selector: str, key: str) -> dict[str, list[str]]:
    script = """return [...document.querySelectorAll(arguments[0])].map(
        r => [r.dataset[arguments[1]], ...[...r.cells].map(c => c.textContent)])"""
    return {row[0]: row[1:] for row in driver.execute_script(script, selector, key)}


def read_rows(driver) -> dict[str, list[str]]:
    return table(driver, "#read-table tbody tr", "feature")


def test_page_walkthrough(page_url, browser):
    url, r = page_url
    d = browser
    d.get(url)
    wait_text(d, "wk-status", "running")
    assert text(d, "st-users") == "0"
    shot(d, "1-empty")

    # Bulk-load 20 users with a 10-minute key TTL through the form.
    for element_id, value in (("bulk-count", "20"), ("bulk-ttl", "600")):
        field = d.find_element(By.ID, element_id)
        field.clear()
        field.send_keys(value)
    d.find_element(By.ID, "bulk-submit").click()
    assert "Materialized 20 user(s) with a 600s key TTL" in wait_text(d, "bulk-result", "Materialized")
    wait_text(d, "st-users", "20")
    assert r.dbsize() == 20 and 590 < r.ttl("fs:user:u0001") <= 600

    # The worker refreshes u0001's streaming fields; a read shows them with a per-field TTL.
    deadline = time.monotonic() + 60
    while not r.hexists("fs:user:u0001", "tx_count_5m"):
        assert time.monotonic() < deadline, "the worker never reached u0001"
        time.sleep(0.05)
    d.find_element(By.ID, "read-submit").click()
    wait_text(d, "read-latency", "ms")
    rows = read_rows(d)
    assert rows["risk_segment"][3] == "PRESENT" and rows["risk_segment"][4] == "no TTL"
    assert rows["risk_segment"][2] == r.hget("fs:user:u0001", "risk_segment").decode()
    if rows["tx_count_5m"][3] == "PRESENT":  # it may have expired between the wait and the read
        assert rows["tx_count_5m"][4].endswith(" s") and float(rows["tx_count_5m"][4][:-2]) <= STREAM_TTL
    WebDriverWait(d, 10, 0.1).until(lambda d: len(texts(d, "#fr-bars .bar-fill.stream")) == 5)
    d.find_element(By.ID, "batch-submit").click()  # 100 > 20 users: the error names the field
    assert "count" in wait_text(d, "batch-result", "count")
    d.find_element(By.ID, "batch-count").clear()
    d.find_element(By.ID, "batch-count").send_keys("20")
    d.find_element(By.ID, "batch-submit").click()
    wait_text(d, "batch-result", "20 users in")
    shot(d, "2-loaded-and-read")

    # Pause: no more pushes, so every streaming field runs out within STREAM_TTL; batch stays.
    d.find_element(By.ID, "wk-toggle").click()
    wait_text(d, "wk-status", "paused")
    deadline = time.monotonic() + STREAM_TTL + 30
    while any(r.hexists(k, "tx_count_5m") for k in r.keys("fs:user:*")):
        assert time.monotonic() < deadline, "streaming fields outlived their TTL"
        time.sleep(0.1)
    d.find_element(By.ID, "read-submit").click()
    WebDriverWait(d, 20, 0.1).until(lambda d: read_rows(d).get("tx_count_5m", [""] * 5)[3] == "NOT_FOUND")
    rows = read_rows(d)
    assert rows["tx_count_5m"][4] == "missing" and rows["failed_logins_15m"][3] == "NOT_FOUND"
    assert rows["risk_segment"][3] == "PRESENT" and rows["avg_amount_30d"][3] == "PRESENT"
    WebDriverWait(d, 10, 0.1).until(lambda d: texts(d, "#fr-bars .ttl")[1:] == ["missing"] * 5)
    assert texts(d, "#fr-bars .ttl")[0].endswith(" s")  # the key TTL remains
    assert r.dbsize() == 20
    shot(d, "3-paused-streaming-expired")

    # Inspect: every field with its TTL, the key TTL and the encoding.
    d.find_element(By.ID, "inspect-user").clear()
    d.find_element(By.ID, "inspect-user").send_keys("u0002")
    d.find_element(By.ID, "inspect-submit").click()
    assert "fs:user:u0002" in wait_text(d, "inspect-key", "fs:user:u0002")
    cells = table(d, "#inspect-table tbody tr", "field")
    assert cells["country_iso"][1:4:2] == ["batch", "no TTL"]
    assert cells["last_device_id"][1:4:2] == ["streaming", "missing"]
    assert cells["country_iso"][2] == r.hget("fs:user:u0002", "country_iso").decode()
    shot(d, "4-inspect")

    # Reset drops the 20 users, nothing else.
    r.set("unrelated:key", "stays")
    d.find_element(By.ID, "reset").click()
    assert "Deleted 20 key(s)" in wait_text(d, "reset-result", "Deleted")
    wait_text(d, "st-users", "0")
    assert r.keys() == [b"unrelated:key"]
    shot(d, "5-reset")
