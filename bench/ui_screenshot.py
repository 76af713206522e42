"""A screenshot of the Dagster UI's global asset lineage, for the README.

    python -m bench.ui_screenshot [--out docs/asset-graph.png] [--port 3917] [--window-size 1600,640]
                                  [--with-runs] [--click "[Show Markdown]"]

Run from the repository root (it reuses the webserver helpers of tests/test_ui.py). Needs
Debian's `chromium` (`apt-get install -y chromium`) and a warehouse: $BETAG_WAREHOUSE_DIR,
else warehouse/; the dataset is $BETAG_DATASET_DIR or the default lookup. The webserver gets
a throwaway DAGSTER_HOME, so the picture shows the definitions, not this machine's run history;
with --with-runs it opens the instance `betag run` records into (what `betag ui` shows), so the
assets appear materialized, with their checks' results. --click opens what a link or button with
that text shows (the UI folds markdown metadata, plots included, behind "[Show Markdown]") before
the capture, driving the browser over the DevTools protocol.

The default page, /asset-groups, draws one box per asset group (sources, landing, staging,
intermediate, marts, llm, evaluation) with the edges between them. Expanding every group
(`--page '/asset-groups?expanded=global@global:marts,...'`) shows each asset, but zoomed out so
far that the names are unreadable at any window size. The window is wide and short because the
UI zooms the graph to fit its panel, and this graph is a long chain.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import websockets

from dagster_betag import settings
from tests.test_ui import free_port, running_webserver, write_instance


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=settings.REPO_ROOT / "docs" / "asset-graph.png")
    parser.add_argument("--port", type=int, default=0, help="webserver port; 0 picks a free one")
    parser.add_argument("--page", default="/asset-groups", help="UI path to capture")
    parser.add_argument("--window-size", default="1600,640", help="browser viewport in CSS pixels, WIDTH,HEIGHT")
    parser.add_argument("--scale", type=float, default=2, help="device pixels per CSS pixel (2: sharp text)")
    parser.add_argument(
        "--with-runs", action="store_true", help="the instance of `betag run` ($DAGSTER_HOME, else .dagster_home/)"
    )
    parser.add_argument("--click", help="text of the link or button to click before the capture (its first match)")
    parser.add_argument(
        "--budget-ms", type=int, default=20_000, help="virtual time the page gets to query and lay out the graph"
    )
    return parser.parse_args()


def browser_command(window_size: str, scale: float) -> list[str]:
    """Headless Chromium; --no-sandbox because root."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("chromium not found: apt-get install -y chromium")
    return [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--window-size={window_size}", f"--force-device-scale-factor={scale}"]  # fmt: skip


def screenshot(url: str, out: Path, window_size: str, scale: float, budget_ms: int) -> None:
    """--virtual-time-budget lets the single-page app fetch its GraphQL and lay the graph out
    before the capture, without a fixed sleep."""
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [*browser_command(window_size, scale), f"--virtual-time-budget={budget_ms}",
               f"--screenshot={out.resolve()}", url]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=budget_ms / 1000 + 120)


def screenshot_after_click(url: str, out: Path, window_size: str, scale: float, click: str, timeout_s: float) -> None:
    """Open ``url``, wait until the page shows ``click``, click it, let what it opens render,
    capture: the browser driven over the DevTools protocol (a real clock, so polls, not a budget)."""
    port = free_port()
    command = [*browser_command(window_size, scale), f"--remote-debugging-port={port}", "about:blank"]
    browser = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as response:
                    pages = [t for t in json.load(response) if t["type"] == "page"]
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        png = asyncio.run(_click_and_capture(pages[0]["webSocketDebuggerUrl"], url, click, deadline))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(png)
    finally:
        browser.kill()
        browser.wait()


async def _click_and_capture(websocket_url: str, url: str, click: str, deadline: float) -> bytes:
    async with websockets.connect(websocket_url, max_size=None) as devtools:
        ids = iter(range(1, 1_000_000))

        async def call(method: str, **params):
            message_id = next(ids)
            await devtools.send(json.dumps({"id": message_id, "method": method, "params": params}))
            while True:  # events arrive between the answers; skip them
                answer = json.loads(await devtools.recv())
                if answer.get("id") == message_id:
                    return answer.get("result", {})

        async def evaluate(expression: str):
            return (await call("Runtime.evaluate", expression=expression, returnByValue=True))["result"].get("value")

        await call("Page.navigate", url=url)
        # the innermost element with that text: a link's wrapper has the same text but no handler
        find = (f"(() => {{ const m = [...document.querySelectorAll('*')].filter(e => e.textContent.trim() === "
                f"{json.dumps(click)}); return m.find(e => !m.some(o => o !== e && e.contains(o))); }})()")  # fmt: skip
        while not await evaluate(f"!!({find})"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {click!r} on {url}")
            await asyncio.sleep(0.5)
        await evaluate(f"({find}).click()")
        await asyncio.sleep(3)  # the dialog's markdown and images render
        return base64.b64decode((await call("Page.captureScreenshot", format="png"))["data"])


def main() -> None:
    args = parse_args()
    port = args.port or free_port()
    with tempfile.TemporaryDirectory(prefix="betag-ui-") as throwaway:
        home = str(settings.dagster_home()) if args.with_runs else throwaway
        if not args.with_runs:
            write_instance(Path(home))
        env = {
            **os.environ,
            "DAGSTER_HOME": home,
            # as under `dagster dev`: the code location parses the dbt project on load, so the
            # graph shows the models as they are now, not as the last manifest had them
            "DAGSTER_IS_DEV_CLI": "1",
            settings.WAREHOUSE_ENV: str(settings.warehouse_dir()),
            settings.DATASET_ENV: str(settings.resolve_dataset_dir()),
        }
        with running_webserver(env, port, Path(throwaway) / "webserver.log"):
            url = f"http://127.0.0.1:{port}{args.page}"
            if args.click:
                screenshot_after_click(url, args.out, args.window_size, args.scale, args.click, args.budget_ms / 1000)
            else:
                screenshot(url, args.out, args.window_size, args.scale, args.budget_ms)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
