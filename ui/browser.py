"""Start the workbench server and drive it with Debian's chromium (browser test, cold-start bench).

Not imported by the app. Playwright is used with the system chromium
(``executable_path=shutil.which("chromium")``); ``playwright install`` is never needed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

__all__ = ["ROOT", "CHROMIUM_ARGS", "free_port", "start_server", "stop_server", "wait_healthy", "launch",
           "wait_idle", "chromium_path"]

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-sync", "--disable-component-update"]
IDLE = '[data-testid="stApp"][data-test-connection-state="CONNECTED"][data-test-script-state="notRunning"]'


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, env: dict | None = None, log_path: Path | None = None) -> subprocess.Popen:
    """``streamlit run app.py`` headless on 127.0.0.1:port (returns at once; see wait_healthy)."""
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true",
           "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none"]
    out = open(log_path, "w") if log_path else subprocess.DEVNULL
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT)


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> float:
    """Poll /_stcore/health until it answers ok; returns the time it took."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the streamlit server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.read().decode().strip() == "ok":
                    return time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"the streamlit server did not become healthy in {timeout:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def launch(playwright, width: int = 1400, height: int = 2200):
    """A headless chromium page with a tall viewport (Streamlit scrolls inside its main area)."""
    browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": width, "height": height})
    return browser, page


def wait_idle(page, timeout_ms: int = 120_000) -> None:
    """Wait until the app is connected and no script is running."""
    page.wait_for_selector(IDLE, timeout=timeout_ms)
