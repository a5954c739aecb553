"""Headless Chromium driven over the DevTools protocol: open a page, wait until it has
rendered, measure what is on screen, take a screenshot.

Why not ``--dump-dom``: the Prefect UI is a single-page app, and what a person sees (how large
an image is drawn, whether a data URI is printed as text) is layout, not markup. The protocol
lets a check ask the rendered page (``getBoundingClientRect``, ``innerText``) and wait for a
condition instead of a fixed time. It speaks JSON over a websocket (``websockets``, which
Prefect already needs); the browser is Debian's ``chromium``.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from metarec.errors import MetarecError

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--disable-dev-shm-usage", "--mute-audio"]


class BrowserError(MetarecError):
    """Chromium is missing, did not start, or a page did not render in time."""


def chromium() -> str | None:
    """The Chromium binary, or None when it is not installed (Debian package ``chromium``)."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """``with Browser(width=1400) as b: b.open(url, ready="..."); b.evaluate("...")``.

    One headless Chromium with a throwaway profile, one page of ``width`` x ``height`` CSS
    pixels (device scale 1, so a screenshot's pixels are the page's)."""

    def __init__(self, width: int = 1400, height: int = 1000) -> None:
        self.width, self.height = width, height
        self._ids = itertools.count(1)
        self._proc: subprocess.Popen[bytes] | None = None
        self._profile: tempfile.TemporaryDirectory[str] | None = None
        self._ws: Any = None

    def __enter__(self) -> Browser:
        from websockets.sync.client import connect

        binary = chromium()
        if binary is None:
            raise BrowserError("Chromium is not installed (apt-get install chromium)")
        self._profile = tempfile.TemporaryDirectory(prefix="metarec-chromium-")
        profile = Path(self._profile.name)
        self._proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
             f"--window-size={self.width},{self.height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        port = self._port(profile / "DevToolsActivePort")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            pages = [t for t in json.loads(resp.read()) if t.get("type") == "page"]
        if not pages:
            raise BrowserError("Chromium started without a page")
        self._ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                  deviceScaleFactor=1, mobile=False)
        return self

    def _port(self, active: Path, timeout_s: float = 30.0) -> int:
        """Chromium writes the port it listens on into the profile once it is up."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise BrowserError(f"Chromium exited with {self._proc.returncode} at start")
            if active.is_file():
                first = active.read_text().splitlines()[:1]
                if first and first[0].isdigit():
                    return int(first[0])
            time.sleep(0.1)
        raise BrowserError(f"Chromium did not open its debugging port in {timeout_s:.0f} s")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._ws is not None:
            self._ws.close()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._profile is not None:
            self._profile.cleanup()

    def call(self, method: str, timeout_s: float = 60.0, **params: Any) -> dict[str, Any]:
        """One protocol command; its result (events that arrive meanwhile are dropped)."""
        msg_id = next(self._ids)
        self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout_s
        while True:
            reply = json.loads(self._ws.recv(timeout=max(deadline - time.monotonic(), 0.01)))
            if reply.get("id") != msg_id:
                continue
            if "error" in reply:
                raise BrowserError(f"{method}: {reply['error'].get('message')}")
            return dict(reply.get("result", {}))

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-able values only)."""
        out = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                        awaitPromise=True)
        if "exceptionDetails" in out:
            raise BrowserError(f"{expression[:60]}...: {out['exceptionDetails'].get('text')}")
        return out.get("result", {}).get("value")

    def open(self, url: str, ready: str = "document.readyState === 'complete'",
             timeout_s: float = 60.0, settle_s: float = 1.0) -> None:
        """Navigate to ``url`` and wait until the ``ready`` expression is true (a single-page
        app renders after load), then ``settle_s`` more for the last layout."""
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout_s
        while not self.evaluate(f"(() => {{ try {{ return !!({ready}); }} "
                                f"catch (e) {{ return false; }} }})()"):
            if time.monotonic() > deadline:
                raise BrowserError(f"{url} did not render in {timeout_s:.0f} s "
                                   f"(waiting for {ready})")
            time.sleep(0.25)
        time.sleep(settle_s)

    def screenshot(self, path: Path, full_page: bool = False, max_height: int = 6000) -> Path:
        """A PNG of the window, or of the whole page (up to ``max_height`` px tall)."""
        height = self.height
        if full_page:
            size = self.call("Page.getLayoutMetrics")["cssContentSize"]
            height = int(min(max(size["height"], self.height), max_height))
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": self.width, "height": height,
                               "scale": 1})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path
