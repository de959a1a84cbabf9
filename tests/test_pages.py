"""The pages in a real browser: Debian's chromium, driven by Selenium through chromium-driver, against `hopscope
serve` fed by the simulated Bookinfo mesh (node-b's clock 1.5 ms ahead, so corrected and raw instants differ).

Every number a page shows carries the API's raw value in `data-value`; each test fetches the same API answer
itself and compares. Every page must load without a SEVERE console message. Screenshots of each page go to
test-artifacts/pages/ (git-ignored).

The tests of a page's numbers pause its live updates (the toggle, as a person would), so that the page they read is
the one they compare; `test_live_pages_…` checks the updates themselves on a server of its own that it feeds as it
goes, and `test_early_states_…` the empty and early states on another."""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from hopscope.instrumentation.meshsim import Options, load_topology
from hopscope.instrumentation.meshsim.runner import SimulationRun
from hopscope.serve_process import ServeProcess
from tests.service_calls import SERVER_DELAY_NS, Call, send, sql_value

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                                reason="needs Debian's chromium and chromium-driver (/usr/bin/chromium, "
                                       "/usr/bin/chromedriver); browser downloads are not used")
WEB = Path(__file__).resolve().parent.parent / "analytics" / "web"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "pages"
REQUESTS = 120
REQUEST_GAP_S = 0.4  # the fixture's requests are this far apart: 2.5 requests/s
GATEWAY = "istio-ingressgateway"
LIVE_INTERVAL_S = 5  # the map's LIVE_SECONDS (analytics/web/map.js)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `hopscope serve`, fed the last minute of Bookinfo traffic, once every trace's critical path is kept."""
    folder = tmp_path_factory.mktemp("pages")
    server = ServeProcess(str(folder / "spans.duckdb"), ["--settle-seconds", "0.5"], log_path=folder / "serve.log")
    server.start()
    run = SimulationRun(load_topology("bookinfo"), server.grpc_target, mode="raw", seed=31, options=Options())
    now_us = time.time_ns() // 1000
    for i in range(REQUESTS):
        run.add(run.simulator.request(now_us - 50_000_000 + int(i * REQUEST_GAP_S * 1e6)))
        run.flush_if_full()
    run.close()
    wait_for_paths(server.api_url, REQUESTS, run.stats.spans_acked)
    yield server.api_url
    server.stop()


def wait_for_paths(api: str, traces: int, spans: int | None = None) -> None:
    """Until `traces` critical paths are stored and no trace waits to settle; with `spans`, also until that many
    spans are stored and read by the follower (an acknowledged span may reach DuckDB a moment later, and then
    change its trace)."""
    deadline = time.monotonic() + 30
    query = (f"SELECT (SELECT count(*) FROM critical_path_traces) = {int(traces)} "
             "AND NOT EXISTS (SELECT 1 FROM hopscope_follower_pending)")
    if spans is not None:
        query += (f" AND (SELECT count(*) FROM spans) = {int(spans)} "
                  "AND (SELECT max(seq) FROM spans_hot) <= (SELECT max(span_seq) FROM hopscope_hops_watermark)")
    while not httpx.post(f"{api}/api/v1/sql", json={"sql": query}).json()["rows"][0][0]:
        assert time.monotonic() < deadline, f"the follower did not settle {traces} traces in 30 s"
        time.sleep(0.3)


def feed_bookinfo(grpc_target: str, requests: int, seed: int) -> int:
    """`requests` simulated Bookinfo requests over the last few seconds, sent over OTLP; returns the spans sent."""
    run = SimulationRun(load_topology("bookinfo"), grpc_target, mode="raw", seed=seed, options=Options())
    now_us = time.time_ns() // 1000
    for i in range(requests):
        run.add(run.simulator.request(now_us - 4_000_000 + i * 4_000_000 // requests))
    run.close()
    return run.stats.spans_acked


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--window-size=1366,768"):
        options.add_argument(flag)
    profile = tempfile.TemporaryDirectory(prefix="hopscope-chromium-")
    options.add_argument(f"--user-data-dir={profile.name}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()
        profile.cleanup()


def get(api: str, path: str, **params: Any) -> dict[str, Any]:
    response = httpx.get(f"{api}/api/v1{path}", params={k: v for k, v in params.items() if v is not None})
    response.raise_for_status()
    return response.json()


def open_page(driver: Any, url: str, page: str, state: str = "ready", live: bool = False) -> Any:
    """Load a page and wait until its data is drawn (the router marks the page ready, or error). Unless `live`, pause
    its live updates, as a person would with the toggle (remembered for the server's later pages)."""
    driver.get(url)
    found = wait_for(driver, f"section.page[data-page='{page}'][data-state='{state}']")
    control = all_of(driver, "[data-testid='live']")
    if control and (control[0].get_attribute("data-state") == "off") == live:
        one(control[0], "[data-testid='live-toggle']").click()
        wait_for(driver, f"[data-testid='live'][data-state='{'on' if live else 'off'}']")
    return found


def eventually(check: Callable[[], Any], timeout: float = 30) -> Any:
    """`check()`'s result once it passes: it is retried while it fails an assertion, misses an element not drawn yet
    or reads one a live update has just replaced. Its last failure is the test's."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except (AssertionError, NoSuchElementException, StaleElementReferenceException):
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def wait_for(driver: Any, css: str, timeout: float = 30) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR,
                                                                                                 css)))


def all_of(element: Any, css: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return element.find_elements(By.CSS_SELECTOR, css)


def one(element: Any, css: str) -> Any:
    from selenium.webdriver.common.by import By

    return element.find_element(By.CSS_SELECTOR, css)


def value(element: Any, testid: str | None = None) -> float | None:
    """The API value a displayed number carries (data-value), as the JSON had it."""
    if testid is not None:
        element = one(element, f"[data-testid='{testid}']")
    raw = element.get_attribute("data-value")
    return None if raw == "null" else float(raw)


def severe_console_messages(driver: Any) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def screenshot(driver: Any, name: str) -> None:
    """The whole page at laptop width (the window is grown to the page's height, then restored)."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1366, max(768, min(height + 100, 6000)))
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))
    driver.set_window_size(1366, 768)


def shown_window(page: Any) -> dict[str, str]:
    """since/until exactly as the page's API answer stated them, so the test asks for the very same window."""
    note = one(page, "[data-testid='window']")
    return {bound: datetime.fromtimestamp(int(note.get_attribute(f"data-{bound}-us")) / 1e6, UTC).isoformat()
            for bound in ("since", "until")}


def shares_of(element: Any) -> dict[str, float]:
    return {segment.get_attribute("data-field"): value(segment)
            for segment in all_of(element, "[data-testid='segment']")}


def test_map_shows_each_edges_numbers_from_the_api_and_an_edge_click_opens_its_detail(api: str, browser: Any) -> None:
    page = open_page(browser, f"{api}/", "map")
    assert severe_console_messages(browser) == []
    screenshot(browser, "map")
    graph = get(api, "/edges", **shown_window(page))
    cards = {(card.get_attribute("data-caller"), card.get_attribute("data-callee")): card
             for card in all_of(page, "[data-testid='edge']")}
    assert set(cards) == {(edge["caller"], edge["callee"]) for edge in graph["edges"]} and len(cards) == 4
    assert {node.get_attribute("data-name") for node in all_of(page, "[data-testid='service']")} == \
        set(graph["services"])
    _check_observed(page, graph)
    rows = {(row.get_attribute("data-caller"), row.get_attribute("data-callee")): row
            for row in all_of(page, "[data-testid='edge-row']")}
    for edge in graph["edges"]:
        card, row = cards[(edge["caller"], edge["callee"])], rows[(edge["caller"], edge["callee"])]
        assert value(card, "edge-rate") == edge["rate_per_s"]
        assert value(card, "edge-error-rate") == edge["error_rate"]
        assert value(card, "edge-p50") == edge["total_ms"]["p50"]
        assert value(card, "edge-p99") == edge["total_ms"]["p99"]
        assert shares_of(card) == {field: share for field, share in edge["share"].items() if share}
        assert spark_of(card) == spark_of(row) == {i: rate for i, rate in enumerate(edge["per_bucket"]["rate_per_s"])
                                                   if rate is not None}
        assert (value(row, "row-hops"), value(row, "row-rate"), value(row, "row-errors-per-s")) == \
            (edge["hops"], edge["rate_per_s"], edge["errors_per_s"])
    # the truth: requests were sent 0.4 s apart, and every one makes one hop on the gateway's edge; over the time
    # the data covers (not the 15-minute window) that reads 2.5/s, 120/119 high (first to last request: 119 gaps)
    gateway = next(edge for edge in graph["edges"] if edge["caller"] == GATEWAY)
    assert gateway["hops"] == REQUESTS and graph["rate_basis"] == "observed"
    assert abs(gateway["rate_per_s"] - 1 / REQUEST_GAP_S) < 0.02 / REQUEST_GAP_S

    cards[("productpage", "reviews")].click()
    detail = wait_for(browser, "section.page[data-page='edge'][data-state='ready']")
    title = one(detail, "[data-testid='edge-title']")
    assert (title.get_attribute("data-caller"), title.get_attribute("data-callee")) == ("productpage", "reviews")
    assert "caller=productpage&callee=reviews" in browser.current_url
    assert severe_console_messages(browser) == []
    screenshot(browser, "edge")


def _check_observed(page: Any, graph: dict[str, Any]) -> None:
    """The interval the page says its rates are over is the answer's."""
    note = one(page, "[data-testid='observed']")
    assert value(note) == graph["observed_seconds"]
    assert (int(note.get_attribute("data-since-us")), int(note.get_attribute("data-until-us"))) == \
        (graph["observed_since_unix_us"], graph["observed_until_unix_us"])


def spark_of(element: Any) -> dict[int, float | None]:
    return {int(point.get_attribute("data-index")): value(point)
            for point in all_of(element, "[data-testid='spark-point']")}


def test_edge_detail_shows_the_components_percentiles_over_time_and_the_slowest_traces(api: str, browser: Any) -> None:
    edge = {"caller": "productpage", "callee": "reviews"}
    page = open_page(browser, f"{api}/#/edge?caller=productpage&callee=reviews", "edge")
    assert severe_console_messages(browser) == []
    group = get(api, "/hops/summary", group_by="edge", **edge, **shown_window(page))["groups"][0]
    assert value(page, "edge-hops") == group["hops"] and value(page, "edge-error-rate") == group["error_rate"]
    _check_edge_rates(api, page, edge)
    for field in ("total", "iptables", "proxy_outbound", "network", "proxy_inbound", "app", "retry"):
        for q in ("p50", "p95", "p99"):
            assert value(page, f"summary-{field}-{q}") == group[f"{field}_ms"][q], (field, q)
        if field != "total":
            assert value(page, f"summary-{field}-share") == group["share"][field]
    series = get(api, "/hops/timeseries", since="15m", step="30s", **edge)  # the page's step for 15 m
    for q in ("p50", "p95", "p99"):
        drawn = {(p.get_attribute("data-series"), int(p.get_attribute("data-t")), value(p))
                 for p in all_of(one(page, f"[data-testid='chart-{q}']"), "[data-testid='point']")}
        expected = {(f"{field}-{q}", point["start_unix_us"], point[f"{field}_ms"][q]) for point in series["points"]
                    for field in ("iptables", "proxy_outbound", "network", "proxy_inbound", "app", "retry")
                    if point[f"{field}_ms"][q] is not None}
        assert drawn == expected and expected, q
    slowest = get(api, "/traces", since="15m", sort="duration", limit=10, **edge)["traces"]
    rows = all_of(page, "[data-testid='slow-trace']")
    assert [row.get_attribute("data-trace-id") for row in rows] == [t["trace_id"] for t in slowest]
    assert [value(row, "slow-duration") for row in rows] == [t["duration_ms"] for t in slowest]


def _check_edge_rates(api: str, page: Any, edge: dict[str, str]) -> None:
    """The edge's rates and its requests-over-time chart are /edges' for the same window."""
    graph = get(api, "/edges", **shown_window(page))
    mine = next(e for e in graph["edges"] if (e["caller"], e["callee"]) == (edge["caller"], edge["callee"]))
    assert (value(page, "edge-rate"), value(page, "edge-errors-per-s")) == (mine["rate_per_s"], mine["errors_per_s"])
    _check_observed(page, graph)
    drawn = {(p.get_attribute("data-series"), int(p.get_attribute("data-t")), value(p))
             for p in all_of(one(page, "[data-testid='chart-rate']"), "[data-testid='point']")}
    expected = {(series, t, mine["per_bucket"][field][i]) for series, field in (("requests", "rate_per_s"),
                                                                               ("errors", "errors_per_s"))
                for i, t in enumerate(graph["buckets"]["start_unix_us"]) if mine["per_bucket"][field][i] is not None}
    assert drawn == expected and expected


def _check_trace_view(api: str, page: Any, trace_id: str, skew: str) -> dict[str, int]:
    """Spans, hops, critical path and skew report on the page equal the API's answers with ?skew=…; returns
    each span's drawn start (µs)."""
    spans = get(api, f"/traces/{trace_id}", skew=skew)
    hops = get(api, f"/traces/{trace_id}/hops", skew=skew)["hops"]
    path = get(api, f"/traces/{trace_id}/critical-path", skew=skew)
    drawn = {row.get_attribute("data-span-id"): int(row.get_attribute("data-start-us"))
             for row in all_of(page, "[data-testid='span']")}
    assert drawn == {span["span_id"]: span["start_unix_us"] for span in spans["spans"]}
    for row in all_of(page, "[data-testid='span']"):
        assert value(row, "span-offset") == int(row.get_attribute("data-start-us"))
    rows = {row.get_attribute("data-anchor"): row for row in all_of(page, "[data-testid='hop']")}
    bars = {bar.get_attribute("data-anchor"): bar for bar in all_of(page, "[data-testid='hop-bar']")}
    assert set(rows) == set(bars) == {hop["anchor_span_id"] for hop in hops}
    for hop in hops:
        fields = ("total", "iptables", "proxy_outbound", "network", "proxy_inbound", "app", "retry")
        assert {f: value(rows[hop["anchor_span_id"]], f"hop-{f}_ms") for f in fields} == \
            {f: hop[f"{f}_ms"] for f in fields}
        assert value(rows[hop["anchor_span_id"]], "hop-start") == hop["start_unix_us"]
        assert {s.get_attribute("data-field"): value(s) for s in all_of(bars[hop["anchor_span_id"]],
                                                                         "[data-testid='hop-segment']")} == \
            {f: hop[f"{f}_ms"] for f in fields[1:] if hop[f"{f}_ms"] and hop[f"{f}_ms"] > 0}
    sections = all_of(page, "[data-testid='cp-section']")
    assert [(s.get_attribute("data-component"), value(s)) for s in sections] == \
        [(s["component"], s["duration_ms"]) for s in path["sections"]]
    for component, ms in path["totals"]["by_component_ms"].items():
        assert value(page, f"cp-{component}-ms") == ms
    assert value(page, "trace-duration") == path["duration_ms"]
    domains = {row.get_attribute("data-domain"): row for row in all_of(page, "[data-testid='skew-domain']")}
    assert set(domains) == {d["domain"] for d in spans["skew"]["domains"]}
    for domain in spans["skew"]["domains"]:
        assert value(domains[domain["domain"]], "skew-shift") == domain["shift_ms"]
        assert value(domains[domain["domain"]], "skew-uncertainty") == domain["uncertainty_ms"]
    return drawn


def test_trace_view_draws_the_apis_spans_and_the_raw_toggle_moves_node_bs_spans(api: str, browser: Any) -> None:
    trace_id = get(api, "/traces", since="15m", sort="duration", limit=1)["traces"][0]["trace_id"]
    page = open_page(browser, f"{api}/#/trace/{trace_id}", "trace")
    assert one(page, "[data-testid='trace']").get_attribute("data-skew") == "corrected"
    corrected = _check_trace_view(api, page, trace_id, "corrected")
    answer = get(api, f"/traces/{trace_id}")
    node_b = next(d for d in answer["skew"]["domains"] if d["domain"] == "node-b")
    assert node_b["shift_ms"] < -1  # the test is only worth something if the clocks really differ
    on_node_b = {span["span_id"] for span in answer["spans"] if span["clock_domain"] == "node-b"}
    labels = {row.get_attribute("data-span-id"): one(row, "[data-testid='span-offset']").text
              for row in all_of(page, "[data-testid='span']")}
    assert severe_console_messages(browser) == []
    screenshot(browser, "trace-corrected")

    one(page, "[data-testid='skew-raw']").click()
    page = wait_for(browser, "section.page[data-page='trace'][data-state='ready'] [data-skew='raw']")
    raw = _check_trace_view(api, browser, trace_id, "raw")
    moved = {span_id for span_id in raw if raw[span_id] != corrected[span_id]}
    assert on_node_b and on_node_b <= moved and len(moved) < len(raw)
    raw_labels = {row.get_attribute("data-span-id"): one(row, "[data-testid='span-offset']").text
                  for row in all_of(browser, "[data-testid='span']")}
    # node-b's spans move by its shift (over 1 ms), so their offsets change; node-a's shift onto the gateway pod's
    # clock is estimated a few µs off zero when the traffic straddles a 10-minute offset window, moving its spans'
    # data-start-us by a µs or two: below the label's resolution (0.01 ms from +1 ms on), so theirs may not change
    assert all(raw_labels[span_id] != labels[span_id] for span_id in on_node_b)
    assert all_of(browser, "[data-testid='skew-none']")
    assert severe_console_messages(browser) == []
    screenshot(browser, "trace-raw")


def test_critical_path_summary_and_what_if_show_the_apis_shares_and_projections(api: str, browser: Any) -> None:
    page = open_page(browser, f"{api}/#/critical", "critical")
    wait_for(browser, "[data-testid='whatif-result'][data-state='ready']")
    endpoint = get(api, "/critical-path/endpoints", since="15m")["endpoints"][0]
    root = one(page, "[data-testid='critical']")
    assert (root.get_attribute("data-service"), root.get_attribute("data-operation")) == \
        (endpoint["service"], endpoint["operation"]) and endpoint["service"] == GATEWAY
    summary = get(api, "/critical-path/summary", service=endpoint["service"], operation=endpoint["operation"],
                  since="15m")
    assert value(page, "cp-traces") == summary["traces"] == REQUESTS
    cards = all_of(page, "[data-testid='quantile']")
    assert [card.get_attribute("data-quantile") for card in cards] == ["p50", "p95", "p99"]
    for card, entry in zip(cards, summary["quantiles"], strict=True):
        assert value(card, "q-latency") == entry["latency_ms"] and value(card, "q-traces") == entry["traces"]
        for component, share in entry["by_component"].items():
            assert value(card, f"q-component-{component}") == share
        assert [(row.get_attribute("data-service"), value(row, "q-service"))
                for row in all_of(card, "tr[data-service]")] == list(entry["by_service"].items())
        assert shares_of(card) == {c: share for c, share in entry["by_component"].items() if share}
    _check_what_if(api, page, endpoint, "proxy", None)
    assert severe_console_messages(browser) == []
    screenshot(browser, "critical")

    from selenium.webdriver.support.ui import Select

    Select(one(page, "[data-testid='whatif-component']")).select_by_value("iptables")
    Select(one(page, "[data-testid='whatif-service']")).select_by_value("reviews")
    one(page, "[data-testid='whatif-run']").click()
    wait_for(browser, "[data-testid='whatif-result'][data-state='ready']")
    _check_what_if(api, page, endpoint, "iptables", "reviews")
    assert severe_console_messages(browser) == []


def _check_what_if(api: str, page: Any, endpoint: dict[str, Any], component: str, of: str | None) -> None:
    body = get(api, "/what-if", component=component, component_service=of, service=endpoint["service"],
               operation=endpoint["operation"], since="15m")
    for q in ("p50", "p95", "p99"):
        assert value(page, f"whatif-latency-{q}") == body["latency_ms"][q]
        assert value(page, f"whatif-projected-{q}") == body["projected_ms"][q]
    assert value(page, "whatif-saving") == body["mean_saving_ms"] and body["mean_saving_ms"] > 0


def test_search_by_service_operation_duration_and_time(api: str, browser: Any) -> None:
    from selenium.webdriver.support.ui import Select

    page = open_page(browser, f"{api}/#/search", "search")
    Select(one(page, "[data-testid='search-service']")).select_by_value("reviews")
    one(page, "[data-testid='search-operation']").send_keys("GET /reviews")
    one(page, "[data-testid='search-min']").send_keys("30")
    since = one(page, "[data-testid='search-since']")
    since.clear()
    since.send_keys("10m")
    Select(one(page, "[data-testid='search-sort']")).select_by_value("duration")
    one(page, "[data-testid='search-run']").click()
    page = wait_for(browser, "section.page[data-page='search'][data-state='ready'] [data-testid='results']")
    assert re.search(r"service=reviews&operation=GET\+%2Freviews&min=30&since=10m&sort=duration",
                     browser.current_url)
    found = get(api, "/traces", service="reviews", operation="GET /reviews", min_duration_ms=30, since="10m",
                sort="duration", limit=50)["traces"]
    rows = all_of(page, "[data-testid='result']")
    assert 0 < len(found) < 50  # the filter must matter: fewer than the page's limit pass it
    assert [row.get_attribute("data-trace-id") for row in rows] == [t["trace_id"] for t in found]
    assert [value(row, "result-duration") for row in rows] == [t["duration_ms"] for t in found]
    assert all(t["duration_ms"] >= 30 for t in found)
    assert severe_console_messages(browser) == []
    screenshot(browser, "search")


def test_a_failed_api_call_shows_its_problem_details(api: str, browser: Any) -> None:
    missing = "0" * 32
    page = open_page(browser, f"{api}/#/trace/{missing}", "trace", state="error")
    assert one(page, "[data-testid='problem-title']").text == "request failed"
    assert one(page, "[data-testid='problem-detail']").text == f"no spans for trace {missing}"
    messages: list[str] = []
    deadline = time.monotonic() + 10
    while len(messages) < 3 and time.monotonic() < deadline:  # the page's three calls fail; Chrome logs each
        messages += severe_console_messages(browser)
        time.sleep(0.1)
    assert len(messages) == 3 and all(f"/api/v1/traces/{missing}" in m and "404" in m for m in messages)
    screenshot(browser, "problem")


def test_pages_ship_in_the_package_and_are_served_under_a_strict_policy(api: str) -> None:
    index = httpx.get(f"{api}/")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    policy = index.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe" not in policy and "default-src 'none'" in policy
    assert not re.search(r"<script(?![^>]*\bsrc=)", index.text) and " style=" not in index.text
    module = httpx.get(f"{api}/ui/app.js")
    assert module.status_code == 200 and "javascript" in module.headers["content-type"]
    assert module.headers["cache-control"] == "no-cache" and module.headers["content-security-policy"] == policy
    assert httpx.get(f"{api}/api/v1/edges").headers["content-type"] == "application/json"
    assert httpx.get(f"{api}/docs").status_code == 200 and httpx.get(f"{api}/healthz").status_code == 200
    missing = httpx.get(f"{api}/ui/nothing.js")
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    # offline: nothing loaded from elsewhere (no CDN), and no inline styles for the CSP to refuse
    for path in (p for p in WEB.iterdir() if p.suffix in {".js", ".css", ".html", ".svg"}):
        text = path.read_text()
        assert not re.search(r"""(?:from|src=|href=|url\(|fetch\()\s*["'`]?(?:https?:)?//""", text), path.name
        assert ".innerHTML" not in text and "setAttribute(\"style\"" not in text, path.name


def test_endpoints_list_the_roots_with_critical_paths(api: str) -> None:
    body = get(api, "/critical-path/endpoints", since="15m")
    assert [(e["service"], e["operation"], e["traces"]) for e in body["endpoints"]] == \
        [(GATEWAY, "productpage.default.svc.cluster.local:9080/*", REQUESTS)]
    summary = get(api, "/critical-path/summary", service=GATEWAY, operation=body["endpoints"][0]["operation"],
                  since="15m")
    assert body["endpoints"][0]["p50_ms"] == summary["quantiles"][0]["latency_ms"]
    assert get(api, "/critical-path/endpoints", since="1s")["endpoints"] == []
    assert httpx.get(f"{api}/api/v1/critical-path/endpoints", params={"limit": 0}).status_code == 422


def _check_early(api: str, page: Any, state: str) -> dict[str, Any]:
    """The page's empty state is the one /hops/status gives, with its numbers."""
    status = get(api, "/hops/status", since="15m")
    empty = one(page, "[data-testid='empty']")
    assert empty.get_attribute("data-state") == status["state"] == state
    for testid, field in (("spans-in-window", "spans_in_window"), ("traces-settling", "traces_settling"),
                          ("settle-seconds", "settle_seconds"), ("last-span", "last_span_unix_us")):
        for shown_value in all_of(empty, f"[data-testid='{testid}']"):
            assert value(shown_value) == status[field], testid
    return status


def test_early_states_say_why_there_is_nothing_yet_and_what_to_do(browser: Any,
                                                                  start_serve: Callable[..., ServeProcess]) -> None:
    server = start_serve("--settle-seconds", "3600")  # nothing settles during the test: it stays early
    api = server.api_url
    page = open_page(browser, f"{api}/", "map")
    _check_early(api, page, "no_spans")
    assert one(page, "[data-testid='exporter-setting']").text == "OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317"
    screenshot(browser, "early-no-spans")

    two_hours_ago = time.time_ns() - 2 * 3600 * 10**9
    send(server.grpc_target, [Call("front", "back", two_hours_ago)])
    eventually(lambda: _is(sql_value(api, "SELECT count(*) FROM spans"), 2))
    for url, name in ((f"{api}/", "map"), (f"{api}/#/search", "search")):
        page = open_page(browser, url, name)
        status = _check_early(api, page, "older")
        assert status["last_span_unix_us"] == (two_hours_ago + SERVER_DELAY_NS) // 1000  # the server span's start

    send(server.grpc_target, [Call("front", "back", time.time_ns() - 2 * 10**9)])
    eventually(lambda: _is(sql_value(api, "SELECT count(*) FROM spans"), 4))
    for url, name in ((f"{api}/", "map"), (f"{api}/#/critical", "critical"),
                      (f"{api}/#/edge?caller=front&callee=back", "edge")):
        page = open_page(browser, url, name)
        status = _check_early(api, page, "settling")
        assert (status["settle_seconds"], status["spans_in_window"], status["traces_settling"]) == (3600, 2, 2)
        assert "Hops appear 3600 s after a trace's last span" in one(page, "[data-testid='empty']").text
        if name == "map":
            screenshot(browser, "early-settling")
    assert severe_console_messages(browser) == []


def _is(actual: Any, expected: Any) -> None:
    assert actual == expected, (actual, expected)


def updated_at(driver: Any) -> int:
    return int(one(driver, "[data-testid='updated']").get_attribute("data-at"))


def _check_live_map(api: str, driver: Any, gateway_hops: int) -> dict[str, Any]:
    """The map on screen shows /edges' answer with `gateway_hops` hops on the gateway's edge."""
    page = one(driver, "section.page[data-page='map'][data-state='ready']")
    graph = get(api, "/edges", **shown_window(page))
    assert next(e["hops"] for e in graph["edges"] if e["caller"] == GATEWAY) == gateway_hops
    _check_observed(page, graph)
    for edge in graph["edges"]:
        selector = f"[data-caller='{edge['caller']}'][data-callee='{edge['callee']}']"
        card, row = one(page, f"[data-testid='edge']{selector}"), one(page, f"[data-testid='edge-row']{selector}")
        assert (value(card, "edge-rate"), value(row, "row-hops")) == (edge["rate_per_s"], edge["hops"])
        assert spark_of(card) == {i: r for i, r in enumerate(edge["per_bucket"]["rate_per_s"]) if r is not None}
    return graph


# records visibility changes and the live control's states with their instants, for the test to read back
_WATCH = """
window.seen = [];
performance.setResourceTimingBufferSize(100000);
// capturing on window: noted before the page's own listener on document acts on the change
window.addEventListener("visibilitychange", () => seen.push([document.visibilityState, performance.now()]), true);
const control = document.querySelector("[data-testid='live']");
new MutationObserver(() => seen.push(["live:" + control.getAttribute("data-state"), performance.now()]))
  .observe(control, {attributes: true, attributeFilter: ["data-state"]});
"""
_EDGES_FETCHED = """return performance.getEntriesByType("resource").filter((e) => e.name.includes("/api/v1/edges"))
  .map((e) => e.startTime)"""


def test_live_pages_follow_new_traffic_keep_the_users_place_and_pause_while_hidden(
        browser: Any, start_serve: Callable[..., ServeProcess]) -> None:
    from selenium.webdriver.support.ui import Select

    server = start_serve("--settle-seconds", "0.5")
    api = server.api_url
    browser.set_window_size(1366, 600)  # the map's page scrolls
    try:
        page = open_page(browser, f"{api}/", "map", live=True)
        assert one(page, "[data-testid='empty']").get_attribute("data-state") == "no_spans"
        # each step below waits for the page to change by itself: no reload
        send(server.grpc_target, [], [("cron", time.time_ns() - 10**9)])  # a trace of one span, no hop (one path)
        eventually(lambda: _check_early(api, page, "no_hops"))
        spans = 1 + feed_bookinfo(server.grpc_target, 20, seed=1)
        wait_for_paths(api, 1 + 20, spans)
        eventually(lambda: _check_live_map(api, browser, 20))
        screenshot(browser, "live-map")

        browser.execute_script("document.querySelector(\"[data-testid='edge'][data-caller='productpage']"
                               "[data-callee='reviews']\").focus(); window.scrollTo(0, 150);")
        scrolled, before = browser.execute_script("return window.scrollY"), updated_at(browser)
        assert scrolled > 0
        spans += feed_bookinfo(server.grpc_target, 20, seed=2)
        wait_for_paths(api, 1 + 40, spans)
        eventually(lambda: _check_live_map(api, browser, 40))
        assert updated_at(browser) > before
        focused = "const e = document.activeElement; return [e.dataset.testid, e.dataset.caller, e.dataset.callee]"
        assert browser.execute_script(focused) == ["edge", "productpage", "reviews"]
        assert browser.execute_script("return window.scrollY") == scrolled

        # another tab in front hides this one: no update until it is back, then one at once
        browser.execute_script(_WATCH)
        browser.execute_script("document.querySelector(\"[data-testid='edge-row']\").drawnBefore = true")
        window, before = one(browser, "[data-testid='window']").get_attribute("data-since-us"), updated_at(browser)
        mine = browser.current_window_handle
        browser.switch_to.new_window("tab")
        time.sleep(LIVE_INTERVAL_S + 2)  # what is checked is that nothing happens for longer than an interval
        browser.close()
        browser.switch_to.window(mine)

        def resumed() -> None:
            seen = browser.execute_script("return window.seen")
            hidden = next(t for name, t in seen if name == "hidden")
            visible = next(t for name, t in seen if name == "visible" and t > hidden)
            assert "live:hidden" in [name for name, t in seen if hidden <= t <= visible]
            fetched = browser.execute_script(_EDGES_FETCHED)
            assert not [t for t in fetched if hidden < t < visible], (seen, fetched)
            assert [t for t in fetched if t >= visible]
        eventually(resumed)
        eventually(lambda: _is(updated_at(browser) > before, True))
        # the same answers draw the same page: nothing is redrawn (unless the minute-aligned window moved on)
        assert browser.execute_script("return document.querySelector(\"[data-testid='edge-row']\").drawnBefore") or \
            one(browser, "[data-testid='window']").get_attribute("data-since-us") != window

        toggle = one(browser, "[data-testid='live-toggle']")
        toggle.click()
        assert (one(browser, "[data-testid='live']").get_attribute("data-state"),
                toggle.get_attribute("aria-pressed")) == ("off", "false")
        browser.refresh()
        wait_for(browser, "section.page[data-page='map'][data-state='ready']")
        assert one(browser, "[data-testid='live']").get_attribute("data-state") == "off"  # remembered
        one(browser, "[data-testid='live-toggle']").click()
        assert one(browser, "[data-testid='live']").get_attribute("data-state") == "on"

        edge = {"caller": "productpage", "callee": "reviews"}
        browser.get(f"{api}/#/edge?caller=productpage&callee=reviews")
        page = wait_for(browser, "section.page[data-page='edge'][data-state='ready']")
        spans += feed_bookinfo(server.grpc_target, 20, seed=3)
        wait_for_paths(api, 1 + 60, spans)

        def edge_updated() -> None:
            group = get(api, "/hops/summary", group_by="edge", **edge, **shown_window(page))["groups"][0]
            assert value(page, "edge-hops") == group["hops"] == 60
            _check_edge_rates(api, page, edge)
        eventually(edge_updated)

        browser.get(f"{api}/#/critical")
        page = wait_for(browser, "section.page[data-page='critical'][data-state='ready']")
        wait_for(browser, "[data-testid='whatif-result'][data-state='ready']")
        Select(one(page, "[data-testid='whatif-component']")).select_by_value("iptables")
        Select(one(page, "[data-testid='whatif-service']")).select_by_value("reviews")
        one(page, "[data-testid='whatif-run']").click()
        wait_for(browser, "[data-testid='whatif-result'][data-state='ready']")
        browser.execute_script("document.querySelector(\"[data-keep='whatif']\").dataset.mark = 'the same'")
        answer = one(page, "[data-testid='whatif-result']").text
        spans += feed_bookinfo(server.grpc_target, 20, seed=4)
        wait_for_paths(api, 1 + 80, spans)

        def summary_updated() -> None:
            endpoint = get(api, "/critical-path/endpoints", since="15m")["endpoints"][0]
            summary = get(api, "/critical-path/summary", service=endpoint["service"],
                          operation=endpoint["operation"], since="15m")
            assert value(page, "cp-traces") == summary["traces"] == 80
            for card, entry in zip(all_of(page, "[data-testid='quantile']"), summary["quantiles"], strict=True):
                assert value(card, "q-traces") == entry["traces"]
        eventually(summary_updated)
        kept = one(page, "[data-keep='whatif']")  # the what-if as the user left it: the same element, choices, answer
        assert kept.get_attribute("data-mark") == "the same"
        assert (Select(one(kept, "[data-testid='whatif-component']")).first_selected_option.get_attribute("value"),
                Select(one(kept, "[data-testid='whatif-service']")).first_selected_option.get_attribute("value")) == \
            ("iptables", "reviews")
        assert one(kept, "[data-testid='whatif-result']").text == answer

        trace_id = get(api, "/traces", since="15m", limit=1)["traces"][0]["trace_id"]
        browser.get(f"{api}/#/trace/{trace_id}")
        wait_for(browser, "section.page[data-page='trace'][data-state='ready']")
        assert all_of(browser, "[data-testid='live']") == []  # a trace is a record: the view stays as drawn
        assert severe_console_messages(browser) == []
    finally:
        browser.execute_script("localStorage.removeItem('hopscope.live')")
        browser.set_window_size(1366, 768)
