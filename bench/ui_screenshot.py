"""A screenshot of the Dagster UI's global asset lineage, for the README.

    python -m bench.ui_screenshot [--out docs/asset-graph.png] [--port 3917] [--window-size 1600,640]
                                  [--with-runs]

Run from the repository root (it reuses the webserver helpers of tests/test_ui.py). Needs
Debian's `chromium` (`apt-get install -y chromium`) and a warehouse: $BETAG_WAREHOUSE_DIR,
else warehouse/; the dataset is $BETAG_DATASET_DIR or the default lookup. The webserver gets
a throwaway DAGSTER_HOME, so the picture shows the definitions, not this machine's run history;
with --with-runs it opens the instance `betag run` records into (what `betag ui` shows), so the
assets appear materialized, with their checks' results.

The default page, /asset-groups, draws one box per asset group (sources, landing, staging,
intermediate, marts, llm, evaluation) with the edges between them. Expanding every group
(`--page '/asset-groups?expanded=global@global:marts,...'`) shows each asset, but zoomed out so
far that the names are unreadable at any window size. The window is wide and short because the
UI zooms the graph to fit its panel, and this graph is a long chain.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

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
    parser.add_argument(
        "--budget-ms", type=int, default=20_000, help="virtual time the page gets to query and lay out the graph"
    )
    return parser.parse_args()


def screenshot(url: str, out: Path, window_size: str, scale: float, budget_ms: int) -> None:
    """Headless Chromium: --virtual-time-budget lets the single-page app fetch its GraphQL and
    lay the graph out before the capture, without a fixed sleep; --no-sandbox because root."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("chromium not found: apt-get install -y chromium")
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--window-size={window_size}",
        f"--force-device-scale-factor={scale}",
        f"--virtual-time-budget={budget_ms}",
        f"--screenshot={out.resolve()}",
        url,
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=budget_ms / 1000 + 120)


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
            screenshot(f"http://127.0.0.1:{port}{args.page}", args.out, args.window_size, args.scale, args.budget_ms)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
