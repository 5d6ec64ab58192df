"""Drives report.html in headless Chromium the way a reader does: types into the change filter
and clicks a column header, then reports what the page shows. Talks to Chromium over the
DevTools protocol on a pipe (--remote-debugging-pipe: JSON messages ending in NUL, written to
fd 3 and read from fd 4), so it needs nothing beyond the standard library and Chromium.

    python3 interact.py REPORT.html PROFILE_DIR   ->  one JSON object on stdout
"""

import fcntl
import json
import os
import subprocess
import sys

TIMEOUT_S = 60

# Each step runs in the page and returns what a reader would see (a change row's first cell
# holds the change id in <b>, then its title and revision).
STEPS = {
    "loaded": "document.getElementById('change-count').textContent",
    "filtered": """(() => {
        const input = document.querySelector('input[data-filter="change-table"]');
        input.value = 'chg-2';
        input.dispatchEvent(new Event('input'));
        const rows = [...document.getElementById('change-table').tBodies[0].rows];
        return {count: document.getElementById('change-count').textContent,
                visible: rows.filter(r => r.style.display !== 'none').map(r => r.cells[0].querySelector('b').textContent)};
    })()""",
    "cleared": """(() => {
        const input = document.querySelector('input[data-filter="change-table"]');
        input.value = '';
        input.dispatchEvent(new Event('input'));
        return document.getElementById('change-count').textContent;
    })()""",
    "sorted": """(() => {
        const table = document.getElementById('change-table');
        const head = table.tHead.rows[0].cells[0];
        const order = () => [...table.tBodies[0].rows].map(r => r.cells[0].querySelector('b').textContent);
        head.click();
        const first = {dir: head.getAttribute('data-dir'), order: order()};
        head.click();
        return [first, {dir: head.getAttribute('data-dir'), order: order()}];
    })()""",
}


class Chromium:
    def __init__(self, profile: str):
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()

        def child_fds():
            # Copy both ends above 4 first, so placing one cannot clobber the
            # other, then put them at 3 and 4 (inheritable: they survive exec).
            r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
            w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(r, 3)
            os.dup2(w, 4)

        self.proc = subprocess.Popen(
            [
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            close_fds=False,
            preexec_fn=child_fds,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.out = os.fdopen(to_chrome_w, "wb", buffering=0)
        self.inp = os.fdopen(from_chrome_r, "rb", buffering=0)
        self.buf = b""
        self.next_id = 0

    def _read(self) -> dict:
        while b"\0" not in self.buf:
            chunk = self.inp.read(65536)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, params=None, session=None) -> int:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.out.write(json.dumps(msg).encode() + b"\0")
        return self.next_id

    def call(self, method: str, params=None, session=None) -> dict:
        want = self.send(method, params, session)
        while True:
            msg = self._read()
            if msg.get("id") == want:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def wait_event(self, method: str, session: str) -> None:
        while True:
            msg = self._read()
            if msg.get("method") == method and msg.get("sessionId") == session:
                return

    def close(self) -> None:
        try:
            self.send("Browser.close")
        finally:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def main() -> None:
    html, profile = sys.argv[1], sys.argv[2]
    browser = Chromium(profile)
    try:
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        browser.call("Page.enable", session=session)
        browser.send("Page.navigate", {"url": "file://" + os.path.abspath(html)}, session=session)
        browser.wait_event("Page.loadEventFired", session)
        seen = {}
        for name, expression in STEPS.items():
            r = browser.call(
                "Runtime.evaluate",
                {"expression": expression, "returnByValue": True},
                session=session,
            )
            if "exceptionDetails" in r:
                raise RuntimeError(f"{name}: {r['exceptionDetails']}")
            seen[name] = r["result"].get("value")
        print(json.dumps(seen))
    finally:
        browser.close()


if __name__ == "__main__":
    import signal

    signal.alarm(TIMEOUT_S)
    main()
