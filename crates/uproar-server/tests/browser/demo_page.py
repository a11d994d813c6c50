"""The demo page in a real browser: headless Chromium, driven over the DevTools protocol (with
the `websockets` client, so no driver download is needed), opens the page, subscribes to a
topic with the page's own form, shows a message published with POST /publish, and sends one
that a second client receives. Prints "ok" and exits 0 on success. With UPROAR_TEST_CA set (a
CA's PEM file), the server speaks TLS: the page is opened over https:// (Chromium told to
ignore certificate errors: its trust store lives in a profile database), the other clients
trust that CA only. With UPROAR_TEST_TOKEN set (the server requires JWTs), the page must show
its token field; the token goes in it, in the other client's URL and in the publish request.

    python3 demo_page.py HOST:PORT [SCREENSHOT.png]
"""
import base64
import itertools
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request

from websockets.sync.client import connect


def browser_binary():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("no chromium on PATH")


def wait_for(what, probe, timeout=15):
    end = time.time() + timeout
    while time.time() < end:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Page:
    """One page target over the DevTools protocol."""

    def __init__(self, ws_url):
        self.ws = connect(ws_url, max_size=None, open_timeout=10)
        self.ids = itertools.count(1)

    def call(self, method, **params):
        i = next(self.ids)
        self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=15))
            if msg.get("id") == i:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def js(self, expression):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in r:
            raise AssertionError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def log_lines(self):
        return self.js("[...document.querySelectorAll('#log li')].map(li => li.textContent)")


def main(base, screenshot=None):
    ca = os.environ.get("UPROAR_TEST_CA")
    tls = ssl.create_default_context(cafile=ca) if ca else None
    http, ws = ("https", "wss") if ca else ("http", "ws")
    token = os.environ.get("UPROAR_TEST_TOKEN")
    profile = tempfile.mkdtemp(prefix="uproar-chromium-")
    proc = subprocess.Popen(
        [browser_binary(), "--headless=new", "--no-sandbox", "--disable-gpu",
         "--no-first-run", "--remote-debugging-port=0", f"--user-data-dir={profile}"]
        + (["--ignore-certificate-errors"] if ca else []) + ["about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # Chromium announces its DevTools endpoint on stderr.
        port = None
        end = time.time() + 30
        while port is None and time.time() < end:
            line = proc.stderr.readline()
            m = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            if m:
                port = int(m.group(1))
        assert port, "chromium did not start its DevTools endpoint"
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
        page = Page(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])
        page.call("Page.enable")
        page.call("Page.navigate", url=f"{http}://{base}/")
        wait_for("the page to load", lambda: page.js("document.readyState") == "complete"
                 and page.js("document.title") == "uproar")
        shown = page.js("!document.getElementById('token').hidden")
        assert shown == bool(token), f"token field shown: {shown}, auth: {bool(token)}"
        if token:
            page.js(f"document.getElementById('token').value = {json.dumps(token)}; true")
        page.js("document.getElementById('topic').value = 'browser';"
                "document.getElementById('subscribe').click(); true")
        wait_for("the subscription", lambda: page.js(
            "document.getElementById('status').textContent") == "subscribed to browser")

        auth_query = f"&token={token}" if token else ""
        other = connect(f"{ws}://{base}/ws/browser?mode=sub{auth_query}", open_timeout=10, ssl=tls)
        headers = {"Content-Type": "text/plain"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(f"{http}://{base}/publish/browser", data=b"from a backend",
                                     headers=headers, method="POST")
        reply = json.load(urllib.request.urlopen(req, context=tls))
        assert reply["topic"] == "browser", reply
        wait_for("the published message in the page", lambda: "from a backend" in page.log_lines())
        assert other.recv(timeout=10) == "from a backend"

        page.js("document.getElementById('text').value = 'from the browser';"
                "document.getElementById('send-button').click(); true")
        assert other.recv(timeout=10) == "from the browser"
        wait_for("the page's own message", lambda: "from the browser" in page.log_lines())
        if screenshot:
            shot = page.call("Page.captureScreenshot", format="png")
            with open(screenshot, "wb") as f:
                f.write(base64.b64decode(shot["data"]))
        other.close()
        print("ok")
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
