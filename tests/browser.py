"""A real headless browser for the tests: Debian's chromium, driven over the Chrome DevTools
protocol (websocket-client), with every request the page makes recorded.

chromium() finds it or installs it with apt-get as tests/slurm/run.sh installs its packages; where
apt-get is unavailable it skips the calling test, unless CI is set, where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from conftest import ci_requires_shared_data

PACKAGE = "chromium"
# Any request that tries to leave the machine goes to a closed local port (and is still recorded).
DEAD_PROXY = "127.0.0.1:9"


def chromium(environ=os.environ) -> str:
    """The chromium executable: on PATH, else installed by apt-get (as root, Debian); else the
    calling test is skipped, or failed under CI (CI=true)."""
    found = shutil.which(PACKAGE)
    if found:
        return found
    if shutil.which("apt-get") and os.geteuid() == 0:
        env = {**environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", PACKAGE],
                       check=True, env=env, timeout=900, stdout=subprocess.DEVNULL)  # fmt: skip
        found = shutil.which(PACKAGE)
        assert found, "apt-get installed chromium but it is not on PATH"
        return found
    why = "chromium is not installed and apt-get (as root) is not available to install it"
    if ci_requires_shared_data(environ):
        pytest.fail(f"{why}; under CI the browser test is required")
    pytest.skip(f"{why}: `apt-get install --no-install-recommends chromium` (Debian) runs this test")


class Browser:
    """One headless chromium with one page, spoken to over the DevTools protocol."""

    def __init__(self, executable: str, width: int = 1400, height: int = 1000) -> None:
        import websocket  # websocket-client

        self.profile = tempfile.mkdtemp(prefix="tokencarbon-chromium-")
        self.proc = subprocess.Popen(
            [executable, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--no-default-browser-check", "--remote-debugging-port=0",
             f"--user-data-dir={self.profile}", f"--proxy-server={DEAD_PROXY}",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        port = self._port()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
            page = next(t for t in json.load(answer) if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30,
                                              suppress_origin=True)  # fmt: skip
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def _port(self, timeout_s: float = 30.0) -> int:
        marker = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if marker.exists() and marker.read_text().strip():
                return int(marker.read_text().split()[0])
            assert self.proc.poll() is None, f"chromium exited with {self.proc.returncode}"
            time.sleep(0.05)
        raise AssertionError(f"chromium wrote no {marker} within {timeout_s} s")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result (events meanwhile are kept)."""
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                assert "error" not in message, f"{method}: {message['error']}"
                return message.get("result", {})
            self.events.append(message)

    def wait_event(self, method: str, timeout_s: float = 60.0) -> dict[str, Any]:
        """Wait for the next event `method` not seen yet."""
        deadline = time.monotonic() + timeout_s
        seen = len(self.events)
        while time.monotonic() < deadline:
            for event in self.events[seen:]:
                if event.get("method") == method:
                    return event
            seen = len(self.events)
            self.events.append(json.loads(self.ws.recv()))
        raise AssertionError(f"no {method} within {timeout_s} s")

    def open(self, path: Path) -> None:
        """Load a local file, recording the page's requests, until its load event."""
        self.call("Network.enable")
        self.call("Page.enable")
        self.call("Page.navigate", url=path.resolve().as_uri())
        self.wait_event("Page.loadEventFired")

    def requested_urls(self) -> list[str]:
        """Every URL the page asked for since open() (Network.requestWillBeSent)."""
        return [e["params"]["request"]["url"] for e in self.events
                if e.get("method") == "Network.requestWillBeSent"]  # fmt: skip

    def js(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)  # fmt: skip
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait_js(self, expression: str, timeout_s: float = 10.0) -> Any:
        """Poll a JavaScript expression until it is truthy; return its value."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"{expression!r} stayed falsy for {timeout_s} s")

    def mouse(self, kind: str, x: float, y: float) -> None:
        """A real mouse event at page coordinates: mouseMoved, mousePressed or mouseReleased."""
        extra = {"button": "left", "clickCount": 1} if kind != "mouseMoved" else {}
        self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, **extra)

    def close(self) -> None:
        """Close the connection, stop chromium (the process this object started), drop its profile."""
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            shutil.rmtree(self.profile, ignore_errors=True)
