"""The web console in a real browser (Debian's Chromium through chromedriver, headless): sign in,
see the master and both workers, see agents appear after agent-sim enrolls them, filter them by
node, save a screenshot. Run by scripts/browser-check.sh, which starts the cluster."""

import os
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

url, user, password, screenshot, profile = sys.argv[1:6]

options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             f"--user-data-dir={profile}", "--window-size=1400,1100",
             # The node's certificate is self-signed, made at its first start.
             "--ignore-certificate-errors"]:
    options.add_argument(flag)
driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)
# The page redraws its tables every 5 s: an element read mid-redraw is stale, and read again.
wait = WebDriverWait(driver, 30, poll_frequency=0.2, ignored_exceptions=[StaleElementReferenceException])


def rows(table_id):
    return driver.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr")


try:
    driver.get(url + "/ui")
    wait.until(lambda d: d.find_element(By.ID, "signin").is_displayed())
    driver.find_element(By.ID, "signin-user").send_keys(user)
    driver.find_element(By.ID, "signin-password").send_keys(password)
    driver.find_element(By.ID, "signin-submit").click()

    expected = ["master-1", "worker-1", "worker-2"]
    wait.until(lambda d: sorted(r.get_attribute("data-node") for r in rows("nodes")) == expected)
    print("nodes:", expected)

    # Agents appear as agent-sim enrolls and connects them (the page refreshes itself).
    wait.until(lambda d: d.find_element(By.ID, "agents-total").text.startswith("30 "))
    wait.until(lambda d: any("active" in r.text for r in rows("agents-table")))
    print("agents:", driver.find_element(By.ID, "agents-total").text)
    # The rebalancer's state under the chart of agents per node.
    wait.until(lambda d: d.find_element(By.ID, "balance").text.startswith("rebalance: on,"))
    print("balance:", driver.find_element(By.ID, "balance").text)

    # Filter by node: every row listed is on that node.
    wait.until(lambda d: "worker-1" in [o.get_attribute("value") for o in Select(d.find_element(By.ID, "filter-node")).options])
    Select(driver.find_element(By.ID, "filter-node")).select_by_value("worker-1")

    def only_worker_1(d):
        listed = rows("agents-table")
        return listed and all(r.find_elements(By.TAG_NAME, "td")[4].text == "worker-1" for r in listed)

    wait.until(only_worker_1)
    shown = wait.until(lambda d: len(rows("agents-table")) if only_worker_1(d) else False)
    assert 0 < shown < 30, shown
    print("agents on worker-1:", shown, "-", driver.find_element(By.ID, "agents-total").text)
    Select(driver.find_element(By.ID, "filter-node")).select_by_value("")
    wait.until(lambda d: len(rows("agents-table")) == 30)
    time.sleep(0.5)
    driver.save_screenshot(screenshot)
    print("screenshot:", screenshot, os.path.getsize(screenshot), "bytes")
finally:
    driver.quit()
