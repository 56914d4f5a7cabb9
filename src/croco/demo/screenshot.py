"""Drive the demo page in a real headless browser and save a screenshot (the picture in docs/demo.md).

    python -m croco.demo.screenshot --ckpt logs/runs/crossview_cpu/checkpoints/last.ckpt \
        --img1 docs/figures/demo_view1.png --img2 docs/figures/demo_view2.png --out docs/figures/demo_ui.png

Starts the page on localhost, uploads the two images, presses the button, waits for the panel and saves the
page. Needs the Python ``playwright`` package and a Chromium binary (Debian: ``apt-get install chromium``); no
browser is downloaded (``playwright install`` is not used), and Chromium is started with its network features
(updates, sync, QUIC, background requests) off.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from croco.utils.files import atomic_output

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "main", "screenshot_demo"]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync")  # fmt: skip


def screenshot_demo(
    ckpt: str | os.PathLike,
    img1: str | os.PathLike,
    img2: str | os.PathLike,
    out: str | os.PathLike,
    *,
    chromium: str = CHROMIUM,
    timeout_s: float = 120.0,
) -> Path:
    """Serve the page, fill it in through the browser, wait for the panel, write the screenshot atomically;
    returns ``out``. The page's server and the browser are closed whatever happens."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from playwright.sync_api import sync_playwright

    from croco.demo.ui import build_ui

    page_app = build_ui(ckpt)
    _, url, _ = page_app.launch(server_name="127.0.0.1", prevent_thread_lock=True, share=False, quiet=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=list(CHROMIUM_ARGS))
            try:
                page = browser.new_page(viewport={"width": 1100, "height": 900})
                page.goto(url, timeout=timeout_s * 1000)
                page.locator("#image1 input[type=file]").set_input_files(str(img1))
                page.locator("#image2 input[type=file]").set_input_files(str(img2))
                page.locator("#image2 img").first.wait_for(timeout=timeout_s * 1000)  # both uploads shown
                page.locator("#image1 img").first.wait_for(timeout=timeout_s * 1000)
                page.locator("#run").click()
                page.locator("#panel img").first.wait_for(timeout=timeout_s * 1000)
                page.wait_for_function("document.querySelector('#panel img').complete", timeout=timeout_s * 1000)
                with atomic_output(out) as tmp:
                    tmp.write_bytes(page.screenshot(full_page=True, type="png"))
            finally:
                browser.close()
    finally:
        page_app.close()
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m croco.demo.screenshot", description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--img1", type=Path, required=True)
    parser.add_argument("--img2", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("docs/figures/demo_ui.png"))
    parser.add_argument("--chromium", default=CHROMIUM, help=f"browser binary (default {CHROMIUM})")
    args = parser.parse_args(argv)
    for path in (args.img1, args.img2, Path(args.chromium)):
        if not path.is_file():
            print(f"error: {path}: no such file", file=sys.stderr)
            return 2
    print(f"wrote {screenshot_demo(args.ckpt, args.img1, args.img2, args.out, chromium=args.chromium)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
