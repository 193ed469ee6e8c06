"""Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``): no
websocket library, no download; the browser is Debian's ``chromium`` (or ``$ROMA_SFM_CHROMIUM``).

``open_page(path)`` loads a file, waits for it to draw and returns a :class:`Page` with the console
errors and uncaught exceptions seen, and lets a test evaluate JavaScript and take screenshots.
"""
from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader", "--use-angle=swiftshader",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-default-apps", "--hide-scrollbars", "--remote-debugging-pipe"]


def chromium() -> Optional[str]:
    """The browser to use, or None when none is installed. Debian's ``/usr/bin/chromium`` is a shell
    launcher that does not pass the pipe's descriptors on: its binary is used directly."""
    env = os.environ.get("ROMA_SFM_CHROMIUM")
    if env:
        return env
    if os.access("/usr/lib/chromium/chromium", os.X_OK):
        return "/usr/lib/chromium/chromium"
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


class Page:
    """One tab of a headless Chromium; ``errors`` collects console errors and uncaught exceptions."""

    def __init__(self, exe: str, width: int = 1300, height: int = 1000, timeout: float = 60):
        self.profile = tempfile.mkdtemp(prefix="chromium-")
        cmd_r, self.cmd_w = os.pipe()
        self.res_r, res_w = os.pipe()

        def pipes() -> None:  # the browser reads commands on fd 3 and writes answers on fd 4
            a, b = os.dup(cmd_r), os.dup(res_w)  # first out of the way: the pipes may be fds 3 and 4
            os.dup2(a, 3)  # (inheritable, unlike os.pipe's descriptors)
            os.dup2(b, 4)

        self.proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=False,
                                     preexec_fn=pipes)
        os.close(cmd_r)
        os.close(res_w)
        self.timeout, self.next_id, self.buffer = timeout, 0, b""
        self.errors: list[str] = []
        self.events: list[dict] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def _read(self) -> dict:
        deadline = time.time() + self.timeout
        while b"\0" not in self.buffer:
            if not select.select([self.res_r], [], [], max(0.0, deadline - time.time()))[0]:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self.res_r, 1 << 20)
            if not chunk:
                raise ConnectionError("Chromium closed its pipe")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        msg = json.loads(raw)
        if "method" in msg:
            self._event(msg)
        return msg

    def _event(self, msg: dict) -> None:
        self.events.append(msg)
        p, m = msg.get("params", {}), msg["method"]
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            self.errors.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
        elif m == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            self.errors.append("exception: " + str(d.get("exception", {}).get("description", d.get("text"))))
        elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
            self.errors.append("log: " + p["entry"].get("text", ""))

    def call(self, method: str, session: bool = False, **params: Any) -> dict:
        """Send a command and wait for its answer (events that arrive meanwhile are recorded)."""
        self.next_id += 1
        msg: dict = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self.cmd_w, json.dumps(msg).encode() + b"\0")
        while True:
            ans = self._read()
            if ans.get("id") == self.next_id:
                if "error" in ans:
                    raise RuntimeError(f"{method}: {ans['error']}")
                return ans.get("result", {})

    def wait_event(self, method: str) -> dict:
        seen = next((e for e in self.events if e["method"] == method), None)
        while seen is None:
            msg = self._read()
            if msg.get("method") == method:
                seen = msg
        return seen

    def js(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        res = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                        awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def screenshot(self, path: Path, clip: Optional[dict] = None) -> Path:
        params: dict = {"format": "png"}
        if clip is not None:
            params["clip"] = {**clip, "scale": 1}
        Path(path).write_bytes(base64.b64decode(self.call("Page.captureScreenshot", session=True, **params)["data"]))
        return Path(path)

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.cmd_w)
        os.close(self.res_r)
        shutil.rmtree(self.profile, ignore_errors=True)


def open_page(path: Path, exe: str, settle: float = 1.5, **kw: Any) -> Page:
    """Load ``path`` (a local file) and wait for its load event plus ``settle`` seconds (WebGL draws
    after the load event)."""
    page = Page(exe, **kw)
    try:
        page.call("Page.navigate", session=True, url=Path(path).resolve().as_uri())
        page.wait_event("Page.loadEventFired")
        end = time.time() + settle
        while time.time() < end:
            page.js("1")  # keeps reading events meanwhile
            time.sleep(0.1)
    except Exception:
        page.close()
        raise
    return page
