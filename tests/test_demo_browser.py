"""The demo page in a real headless Chromium (Debian's chromium + chromedriver, via Selenium).

Walks the seed's story with every control of the page, with the internet blocked: the empty
page, bulk-load, the watched user fresh at once, live charts growing, a mixed read with event
times and ages, batch scoring's summary, the worker's settings, "pause and watch it expire",
inspect, picking a fresh user, reset's empty states (and no polling of errors), and /docs
rendering offline. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from conftest import assert_expiry, write_window
from selenium import webdriver  # the test extra installs selenium
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from feast_redis_hexpire.demo import repo as demo_repo
from feast_redis_hexpire.demo.app import create_app
from feast_redis_hexpire.demo.core import Demo
from feast_redis_hexpire.demo.server import ServerThread
from feast_redis_hexpire.local_redis import LocalRedis

pytestmark = [pytest.mark.browser, pytest.mark.needs("chromium"), pytest.mark.timeout(600)]

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
        demo = Demo.create(repo, users_per_tick=10, interval=0.5, worker_seed=1).start()
        try:
            with ServerThread(create_app(demo)) as url:
                yield url, server.client()
        finally:
            demo.stop()


@pytest.fixture(scope="module")
def browser():
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and chromedriver  # the needs("chromium") mark fails the test, naming them, if not
    profile = tempfile.mkdtemp(prefix="demo-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 f"--user-data-dir={profile}", "--window-size=1280,1900"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
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


def bars(driver) -> dict[str, dict[str, str]]:
    script = """return [...document.querySelectorAll('#fr-bars .bar-row')].map(r => [r.dataset.field,
        r.querySelector('.ttl').textContent, r.querySelector('.ttl').title,
        r.querySelector('.when').textContent, r.querySelector('.bar-fill').className])"""
    rows = driver.execute_script(script)
    return {
        name: {"ttl": ttl, "exact": exact, "when": when, "kind": kind}
        for name, ttl, exact, when, kind in rows
    }


def chart_points(driver) -> dict[str, list[int]]:
    """Per chart: the number of non-null points of each drawn series (uPlot's own data)."""
    script = """return Object.fromEntries(Object.entries(window.demoCharts).map(([id, c]) =>
        [id, c.data.slice(1).map(s => s.filter(v => v !== null && v !== undefined).length)]))"""
    return driver.execute_script(script)


def fill(driver, element_id: str, value: str) -> None:
    field = driver.find_element(By.ID, element_id)
    field.click()  # focused: the page's refresh leaves it alone from now on
    field.clear()
    field.send_keys(value)
    assert field.get_attribute("value") == value


DURATION = re.compile(r"^(\d+(\.\d)? s|\d+ m \d+ s|\d+ h \d+ m|\d+ d \d+ h)$")
BLOCKED = ["https://*", "*cdn*", "*jsdelivr*", "*unpkg*", "*googleapis*", "*fastapi.tiangolo.com*"]


def test_page_walkthrough(page_url, browser):
    url, r = page_url
    d = browser
    # Nothing outside the demo's own server may be needed: block the internet for the whole test.
    d.execute_cdp_cmd("Network.enable", {})
    d.execute_cdp_cmd("Network.setBlockedURLs", {"urls": BLOCKED})
    d.get(url)
    wait_text(d, "wk-status", "running")
    assert text(d, "st-users") == "0" and text(d, "st-watched") == "none"
    WebDriverWait(d, 10, 0.1).until(lambda d: "No users loaded" in text(d, "fr-empty"))
    views = {v.get_attribute("data-view"): v.text for v in d.find_elements(By.CSS_SELECTOR, "#views .view")}
    stream = views["user_streaming_features"]
    assert "streaming because its source 'user_events_push' is a PushSource" in stream
    assert "batch because no stream source" in views["user_batch_features"]
    assert "tx_count_5m" in views["user_streaming_features"] and "country_iso" in views["user_batch_features"]
    shot(d, "1-empty")

    # Bulk-load 20 users with a 10-minute key TTL through the form.
    fill(d, "bulk-count", "20")
    fill(d, "bulk-ttl", "600")
    with write_window() as load:
        d.find_element(By.ID, "bulk-submit").click()
        assert "Materialized 20 user(s) with a 10 m 0 s key TTL" in wait_text(
            d, "bulk-result", "Materialized"
        )
    wait_text(d, "st-users", "20")
    assert r.dbsize() == 20
    assert_expiry([r.pexpiretime("fs:user:u0001")], load, 600, "u0001")

    # Right on first load: the watched user gets fresh streaming data from the worker at once.
    assert wait_text(d, "st-watched", "u0001") == "u0001"
    WebDriverWait(d, 30, 0.1).until(
        lambda d: bars(d).get("tx_count_5m", {}).get("ttl") not in (None, "missing")
    )
    WebDriverWait(d, 30, 0.1).until(lambda d: int(text(d, "st-fresh") or 0) >= 1)
    b = bars(d)
    key = b["key TTL (batch)"]
    assert re.fullmatch(r"\d+ m \d+ s", key["ttl"]) and key["exact"].endswith(" ms left"), key
    assert re.fullmatch(r"\d\d:\d\d:\d\d · .+ ago", key["when"]), key
    assert DURATION.match(b["tx_count_5m"]["ttl"]) and "stream" in b["tx_count_5m"]["kind"]
    assert text(d, "st-stream-ttl") == "3.0 s" and text(d, "st-batch-ttl") == "10 m 0 s"
    assert "MEMORY USAGE" in text(d, "fr-meta") and "one hash" in text(d, "fr-meta")

    # Live charts: every series gets points, and they keep coming.
    WebDriverWait(d, 30, 0.2).until(lambda d: all(min(c) >= 2 for c in chart_points(d).values()))
    first = chart_points(d)
    WebDriverWait(d, 30, 0.2).until(lambda d: chart_points(d)["chart-users"][0] > first["chart-users"][0])
    grown = chart_points(d)
    assert (
        all(grown[k][0] >= first[k][0] for k in grown)
        and grown["chart-latency"][0] > first["chart-latency"][0]
    )
    assert d.find_elements(By.CSS_SELECTOR, "#chart-latency canvas")

    # A mixed read: values, their event time and age; batch fields go with the key.
    d.find_element(By.ID, "read-submit").click()
    wait_text(d, "read-latency", "ms")
    rows = read_rows(d)
    assert rows["risk_segment"][3] == "PRESENT" and re.fullmatch(
        r"with key · \d+ m \d+ s", rows["risk_segment"][4]
    )
    assert rows["risk_segment"][2] == r.hget("fs:user:u0001", "risk_segment").decode()
    assert re.fullmatch(r"\d\d:\d\d:\d\d", rows["risk_segment"][5]) and DURATION.match(
        rows["risk_segment"][6]
    )

    # Batch scoring: a summary, the per-user lines folded away.
    fill(d, "batch-count", "20")
    d.find_element(By.ID, "batch-submit").click()
    assert "20 users in" in wait_text(d, "batch-result", "20 users in")
    summary = table(d, "#batch-summary tbody tr", "feature")
    assert summary["risk_segment"][1:] == ["batch", "20", "0"]
    assert int(summary["tx_count_5m"][2]) + int(summary["tx_count_5m"][3]) == 20
    assert d.find_element(By.ID, "batch-details").get_attribute("open") is None
    assert not d.find_element(By.ID, "batch-users").is_displayed()
    shot(d, "2-loaded-read-charts")

    # The worker's controls: a 45 s streaming TTL for new pushes, 4 users every 0.25 s.
    fill(d, "set-ttl", "45")
    fill(d, "set-users", "4")
    fill(d, "set-tick", "0.25")
    d.find_element(By.ID, "set-submit").click()
    assert "45 s field TTL" in wait_text(d, "settings-result", "field TTL")
    wait_text(d, "st-stream-ttl", "45 s")
    deadline = time.monotonic() + 30
    while not 3000 < r.hpttl("fs:user:u0001", "tx_count_5m")[0] <= 45000:
        assert time.monotonic() < deadline, "the new TTL never reached a push"
        time.sleep(0.1)

    # One click: pause and watch it expire (a 20 s TTL push, then the worker pauses).
    d.find_element(By.ID, "scenario-expire").click()
    assert "Worker paused" in wait_text(d, "scenario-result", "Worker paused")
    wait_text(d, "wk-status", "paused")
    assert 0 < r.hpttl("fs:user:u0001", "tx_count_5m")[0] <= 20000
    WebDriverWait(d, 60, 0.2).until(
        lambda d: [v["ttl"] for k, v in bars(d).items() if k != "key TTL (batch)"] == ["missing"] * 5
    )
    assert re.fullmatch(r"\d+ m \d+ s", bars(d)["key TTL (batch)"]["ttl"])  # the batch layer stays
    assert r.hexists("fs:user:u0001", "risk_segment") and not r.hexists("fs:user:u0001", "tx_count_5m")
    shot(d, "3-expired")

    # Inspect: every field with its expiry; the timestamp fields as times.
    fill(d, "inspect-user", "u0002")
    d.find_element(By.ID, "inspect-submit").click()
    assert "fs:user:u0002" in wait_text(d, "inspect-key", "fs:user:u0002")
    cells = table(d, "#inspect-table tbody tr", "field")
    assert cells["country_iso"][1] == "batch" and cells["country_iso"][3].startswith("with key · ")
    assert cells["country_iso"][2] == r.hget("fs:user:u0002", "country_iso").decode()
    assert re.fullmatch(r"\d\d:\d\d:\d\d · .+ ago", cells["_ts:user_batch_features"][2])
    shot(d, "4-inspect")

    # Resume, then pick a user with fresh streaming data.
    d.find_element(By.ID, "wk-toggle").click()
    wait_text(d, "wk-status", "running")
    deadline = time.monotonic() + 30
    while not any(r.hexists(f"fs:user:u{i:04d}", "_ts:user_streaming_features") for i in range(2, 21)):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    d.find_element(By.ID, "pick-fresh").click()
    WebDriverWait(d, 30, 0.1).until(lambda d: text(d, "fr-user") not in ("-", "no one"))
    watched = text(d, "fr-user")
    WebDriverWait(d, 30, 0.1).until(
        lambda d: bars(d).get("tx_count_5m", {}).get("ttl") not in (None, "missing")
    )
    assert text(d, "st-watched") == watched

    # Reset: every panel shows its empty state and what to do next; nothing polls an error.
    r.set("unrelated:key", "stays")
    d.find_element(By.ID, "reset").click()
    assert "Bulk-load to start again" in wait_text(d, "reset-result", "Deleted")
    wait_text(d, "st-users", "0")
    WebDriverWait(d, 10, 0.1).until(lambda d: "No users loaded" in text(d, "fr-empty"))
    assert "bulk-load" in text(d, "read-latency") and "bulk-load" in text(d, "inspect-key")
    assert not d.find_element(By.ID, "inspect-table").is_displayed()
    assert not d.find_element(By.ID, "read-table").is_displayed()
    assert r.keys() == [b"unrelated:key"]
    mark = d.execute_script("return performance.now()")
    time.sleep(3)
    polled = d.execute_script(
        "return performance.getEntriesByType('resource').filter(e => e.startTime > arguments[0])"
        ".map(e => new URL(e.name).pathname)",
        mark,
    )
    assert "/state" in polled and "/inspect" not in polled, polled
    shot(d, "5-reset")

    # /docs renders from the package's own Swagger UI files with the internet blocked.
    d.get(url + "/docs")
    WebDriverWait(d, 30, 0.2).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) >= 12)
    assert "feast-redis-hexpire demo" in d.find_element(By.CSS_SELECTOR, ".info .title").text
    shot(d, "6-docs-offline")
