"""Drives the customer dashboard in headless Chromium and compares every
figure on the page with GET /v1/usage.

    dashboard_check.py BASE_URL TOKEN OTHER_ORG_TOKEN SCREENSHOT_DIR

Prints one `ok - ...` / `not ok - ...` line per check and `N passed, N
failed`; exits non-zero on any failure.
"""

import decimal
import json
import sys
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

base, token, other_token, shots = sys.argv[1:5]
results = []


def check(name, ok, detail=""):
    results.append(ok)
    print(("ok - " if ok else "not ok - ") + name + ("" if ok else f": {detail}"), flush=True)


def shown(value):
    if value is None:
        return "—"
    return value if isinstance(value, str) else json.dumps(value)


def usage_report(bearer=token):
    request = urllib.request.Request(f"{base}/v1/usage", headers={"Authorization": f"Bearer {bearer}"})
    return json.load(urllib.request.urlopen(request))


def rounded(value, places):
    """The figure as the page shows it: the API's decimal rounded half to even
    to `places` when it has more (rust_decimal's round_dp)."""
    exact = decimal.Decimal(value)
    if -exact.as_tuple().exponent > places:
        exact = exact.quantize(decimal.Decimal(1).scaleb(-places), rounding=decimal.ROUND_HALF_EVEN)
    return str(exact)


def figure(element_id):
    """(exact value, shown text) of a figure on the page."""
    element = driver.find_element(By.ID, element_id)
    data = element.find_elements(By.TAG_NAME, "data")
    return (data[0].get_attribute("value") if data else element.text), element.text


def as_number(value):
    return float(value) if isinstance(value, (int, float, str)) else None


report = usage_report()

options = Options()
for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
    options.add_argument(arg)
options.binary_location = "/usr/bin/chromium"
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
try:
    driver.set_window_size(1280, 900)
    driver.get(f"{base}/dashboard")
    check("an unsigned visitor gets the sign-in form", bool(driver.find_elements(By.ID, "token")))
    driver.find_element(By.ID, "token").send_keys("dyn_other_" + "0" * 64)
    driver.find_element(By.ID, "sign-in").click()
    errors = driver.find_elements(By.ID, "error")
    check("a wrong token is refused", bool(errors) and "not valid" in errors[0].text,
          driver.page_source[:300])

    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "sign-in").click()
    check("the token is not in the URL", token not in driver.current_url, driver.current_url)
    cookie = driver.get_cookie("dynabase_token")
    check("the token is kept in an HttpOnly, SameSite=Strict cookie",
          cookie is not None and cookie.get("httpOnly") and cookie.get("sameSite") == "Strict",
          str(cookie))
    billing = report["billing"]
    for element, value in {"org": report["org"], "period": report["period"], "tier": report["tier"]}.items():
        text = driver.find_element(By.ID, element).text
        check(f"{element} shows {value}", text == value, f"page shows {text!r}")
    figures = {
        "vcpu-hours": (report["total_vcpu_hours"], 4),
        "gb-hours": (report["measured"]["gb_hours"], 4),
        "included": (report["included_vcpu_hours"], 4),
        "percent-used": (report["percent_used"], 2),
        "charge": (billing["charge"]["amount"], 2),
    }
    for element, (value, places) in figures.items():
        exact, text = figure(element)
        check(f"{element} carries {value} and shows {rounded(value, places)}",
              exact == value and text == rounded(value, places), f"page has {exact!r} shown as {text!r}")
    # A projection extrapolates to the end of the period from the current
    # time, so it moves between two requests: the page's figure must lie
    # between /v1/usage read just before and just after the page.
    later = usage_report()
    for element, key in (("projected", "projected_vcpu_hours"), ("projected-cost", "projected_overage_cost")):
        exact, text = figure(element)
        before, after = report[key], later[key]
        if before is None or after is None:
            ok = text == shown(before) or text == shown(after)
        else:
            low, high = sorted((as_number(before), as_number(after)))
            ok = low <= as_number(exact) <= high
        check(f"{element} shows a projection between {shown(before)} and {shown(after)}", ok,
              f"page has {exact!r}")
    for row, database in zip(driver.find_elements(By.CSS_SELECTOR, "#per-database tbody tr"), report["by_database"]):
        cells = row.find_elements(By.TAG_NAME, "td")
        data = cells[2].find_element(By.TAG_NAME, "data").get_attribute("value")
        check(f"database {database['database']} row matches",
              cells[0].text == database["database"] and cells[1].text == str(database["query_cycles"])
              and data == database["vcpu_hours"], row.text)
    rows = driver.find_elements(By.CSS_SELECTOR, "#per-database tbody tr")
    check("one row per database", len(rows) == len(report["by_database"]),
          f"{len(rows)} rows for {len(report['by_database'])}")
    bars = driver.find_elements(By.CSS_SELECTOR, "#per-day-chart rect")
    check("one bar per day", len(bars) == len(report["by_day"]), f"{len(bars)} bars")
    check("no script, stylesheet or image is fetched from anywhere",
          not driver.find_elements(By.CSS_SELECTOR, "script, link[href], img[src]"))
    driver.save_screenshot(f"{shots}/dashboard-desktop.png")
    driver.set_window_size(390, 844)
    driver.get(f"{base}/dashboard")
    width = driver.execute_script("return document.documentElement.scrollWidth")
    check("readable on a phone (no horizontal scroll)", width <= 390, f"scroll width {width}")
    driver.save_screenshot(f"{shots}/dashboard-phone.png")
    driver.find_element(By.ID, "sign-out").click()
    WebDriverWait(driver, 10).until(expected_conditions.presence_of_element_located((By.ID, "token")))
    check("signing out forgets the token", driver.get_cookie("dynabase_token") is None)

    # Another org's token shows that org and nothing of the first one.
    other = usage_report(other_token)
    driver.find_element(By.ID, "token").send_keys(other_token)
    driver.find_element(By.ID, "sign-in").click()
    WebDriverWait(driver, 10).until(expected_conditions.presence_of_element_located((By.ID, "org")))
    page = driver.find_element(By.TAG_NAME, "body").text
    check("another org's token shows only that org",
          driver.find_element(By.ID, "org").text == other["org"] and report["org"] not in page,
          page[:200])
    check("another org's figures are its own",
          figure("vcpu-hours")[0] == other["total_vcpu_hours"], str(figure("vcpu-hours")))
finally:
    driver.quit()

passed = sum(results)
print(f"{passed} passed, {len(results) - passed} failed")
sys.exit(0 if all(results) else 1)
