"""The console in a real headless Chromium, driven over WebDriver (selenium).

Run by the integration test `console_browser` (tests/it/console_browser.rs),
which starts Postgres, a receiver that has been failing and the sidecar with
its admin listener, then calls:

    python3 tests/console_browser.py ADMIN_URL TOKEN SCREENSHOT_DIR ENDPOINT_ID DELIVERY_ID

Scenarios: a wrong token is refused; sign in; the failing endpoint is on
the overview; open the dead delivery, read the receiver's answer, press
retry and see it delivered; pause and resume an endpoint; a cross-site POST
without the CSRF token is refused. Every page is saved as a PNG. Exits 0 only
if every check held; prints what it checked.
"""

import http.server
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

ADMIN, TOKEN, SHOTS, ENDPOINT, DELIVERY = sys.argv[1:6]
STARTED = time.monotonic()
DEADLINE = 45.0  # generous: CI runs every test at once on two cores


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok: {what} ({time.monotonic() - STARTED:.1f} s)", flush=True)


def settled(what, fn):
    """`what` holds once the page a click navigated to has loaded: a click
    returns before the form's answer replaces the page, so the condition is
    polled (an element gone mid-navigation counts as not yet), bounded by
    DEADLINE."""
    def attempt():
        try:
            return fn()
        except Exception:  # stale or missing element: the old page is going
            return False
    until(what, attempt)
    print(f"ok: {what} ({time.monotonic() - STARTED:.1f} s)", flush=True)


def until(what, fn):
    start = time.monotonic()
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() - start > DEADLINE:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)  # poll, bounded by DEADLINE


def api(path):
    req = urllib.request.Request(f"{ADMIN}/api/v1{path}", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def main():
    os.makedirs(SHOTS, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="pgwebhooks-chromium-")
    opts = webdriver.ChromeOptions()
    for arg in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1360,1000"]:
        opts.add_argument(arg)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium:
        opts.binary_location = chromium
    driver = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=opts)
    driver.set_page_load_timeout(45)

    def shot(name):
        # The whole page, not just the window.
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1360, max(800, min(height + 40, 4000)))
        driver.save_screenshot(os.path.join(SHOTS, f"{name}.png"))
        driver.set_window_size(1360, 1000)

    def text():
        return driver.find_element(By.TAG_NAME, "body").text

    try:
        # A wrong token is refused.
        driver.get(f"{ADMIN}/console")
        check(driver.current_url.endswith("/console/login"), "not signed in: the login page")
        shot("login")
        driver.find_element(By.NAME, "token").send_keys(TOKEN + "-wrong")
        driver.find_element(By.CSS_SELECTOR, "button[type=submit].primary").click()
        settled("a wrong token is refused", lambda: "not the admin token" in text())
        check(driver.get_cookie("pgwebhooks_session") is None, "no session cookie for a wrong token")
        shot("login-refused")

        # Sign in.
        driver.find_element(By.NAME, "token").send_keys(TOKEN)
        driver.find_element(By.CSS_SELECTOR, "button[type=submit].primary").click()
        settled("signed in: the overview", lambda: driver.current_url.endswith("/console"))
        cookie = driver.get_cookie("pgwebhooks_session")
        check(cookie and cookie.get("httpOnly") and cookie.get("sameSite") == "Strict", "the cookie is HttpOnly, SameSite=Strict")

        # The failing endpoint is on the overview.
        card = driver.find_element(By.ID, f"endpoint-{ENDPOINT}")
        check("failing" in card.text and "HTTP 500" in card.text, "the failing endpoint shows on the overview with its answer")
        check(len(card.find_elements(By.CSS_SELECTOR, "svg.plot rect")) > 0, "its attempts per minute are plotted")
        degraded = driver.find_element(By.ID, "capture-degraded")
        check("shop.orders" in degraded.text and "order 7 cannot be shaped" in degraded.text,
              "a degraded capture shows on the overview with its last error")
        shot("overview")

        # Dead letters → the delivery → the receiver's answer → retry → delivered.
        driver.find_element(By.LINK_TEXT, "Dead letters").click()
        settled("the dead delivery is listed", lambda: f"#{DELIVERY}" in text())
        shot("dead-letters")
        driver.find_element(By.LINK_TEXT, f"#{DELIVERY}").click()
        settled("the delivery is dead", lambda: driver.find_element(By.ID, "status").text == "dead")
        attempts = driver.find_element(By.ID, "attempts").text
        check("Make says no: scenario is off" in attempts and "HTTP 500" in attempts, "the receiver's answer is shown for each attempt")
        check("whsec_" not in text(), "no secret on the page")
        shot("delivery-dead")
        driver.find_element(By.NAME, "retry").click()
        settled("retry says it re-queued", lambda: "Re-queued 1 delivery" in text())

        def delivered():
            driver.refresh()
            return driver.find_element(By.ID, "status").text == "delivered"

        until("the retried delivery to be delivered", delivered)
        check("HTTP 200" in driver.find_element(By.ID, "attempts").text, "the new attempt got a 200")
        shot("delivery-delivered")

        # Pause and resume.
        driver.get(f"{ADMIN}/console/endpoints")
        shot("endpoints")
        row = lambda: driver.find_element(By.ID, f"endpoint-{ENDPOINT}")
        row().find_element(By.NAME, "pause").click()
        settled("pause", lambda: "Endpoint paused" in text() and "paused" in row().text)
        check(api(f"/endpoints/{ENDPOINT}")["enabled"] is False, "the API sees it paused")
        shot("endpoints-paused")
        row().find_element(By.NAME, "resume").click()
        settled("resume", lambda: "Endpoint resumed" in text() and "enabled" in row().text)
        check(api(f"/endpoints/{ENDPOINT}")["enabled"] is True, "the API sees it enabled")

        # The other pages.
        for name, path in [("endpoint", f"/console/endpoints/{ENDPOINT}"), ("deliveries", "/console/deliveries"),
                           ("inbound", "/console/inbound"), ("audit", "/console/actions")]:
            driver.get(f"{ADMIN}{path}")
            check("Internal" not in text(), f"{name} renders")
            shot(name)
        check("endpoint.pause" in text() and "console session" in text(), "the audit page lists the pause and who did it")
        driver.get(f"{ADMIN}/console/search?q=app.appointments+42")
        check(f"#{DELIVERY}" in text(), "search by source row finds the delivery")
        shot("search")

        # A cross-site POST without the CSRF token is refused.
        evil_page = f"""<!doctype html><form id=f method=post action="{ADMIN}/console/endpoints/{ENDPOINT}/pause">
            <input name=reason value=evil><button id=go>Win a prize</button></form>"""

        class Evil(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("content-type", "text/html")
                self.end_headers()
                self.wfile.write(evil_page.encode())

            def log_message(self, *args):
                pass

        evil = http.server.HTTPServer(("127.0.0.1", 0), Evil)
        threading.Thread(target=evil.serve_forever, daemon=True).start()
        driver.get(f"http://localhost:{evil.server_address[1]}/")
        driver.find_element(By.ID, "go").click()
        settled("the cross-site POST is refused (403)",
                lambda: ("refused" in text() or "not signed in" in text()) and "Forbidden" in text())
        shot("cross-site-refused")
        check(api(f"/endpoints/{ENDPOINT}")["enabled"] is True, "the endpoint was not paused")
        evil.shutdown()
    except Exception:
        try:
            shot("failure")
            print("page at failure:", driver.current_url, "\n", text()[:3000], file=sys.stderr)
        except Exception:
            pass
        raise
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    print("all browser scenarios passed")


if __name__ == "__main__":
    main()
