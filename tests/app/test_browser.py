"""The web page at / in a real headless browser (Debian's Chromium driven by Playwright) against the real service."""

from __future__ import annotations

import io
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from app.main import create_app
from app.settings import Settings
from tests.conftest import busy_background, draw_product, product_cutout

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STATIC_INDEX = Path(__file__).resolve().parents[2] / "app" / "static" / "index.html"
VIEWPORT = {"width": 1280, "height": 900}
TIMEOUT_MS = 60_000  # a search embeds on a shared CPU: be patient, the assertions are on content, not speed


@pytest.fixture(scope="module")
def base_url(built_data_dir: Path, tiny_localiser_path: Path) -> Iterator[str]:
    """The real app under uvicorn in a thread, on a free loopback port."""
    import uvicorn

    settings = Settings(data_dir=built_data_dir, reload_interval_s=0, device="cpu",
                        localiser_weights=tiny_localiser_path)
    app = create_app(settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (/usr/bin/chromium); `make test` installs it")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed")
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, base_url):  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{base_url}/")
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _photo(tmp_path: Path, product: int, variant: int) -> Path:
    path = tmp_path / f"query-p{product}-v{variant}.jpg"
    draw_product(product, variant).save(path, quality=90)
    return path


def _wait_for_status(page, text: str) -> None:  # type: ignore[no-untyped-def]
    page.wait_for_function(
        "text => document.body.dataset.state === 'done' && document.getElementById('status').textContent.includes(text)",
        arg=text)


def _cards(page) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    return page.eval_on_selector_all(
        "#results .card",
        "cards => cards.map(c => ({item: c.dataset.itemId, product: c.dataset.productId,"
        " title: c.querySelector('.title').textContent, score: c.querySelector('.score').textContent}))")


def test_page_is_served_as_html(base_url: str) -> None:
    import httpx

    response = httpx.get(f"{base_url}/", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "<title>Lookalike" in response.text
    assert "http://" not in response.text and "https://" not in response.text  # offline: nothing from a CDN


def test_upload_refine_more_like_this_and_screenshot(page, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert page.title().startswith("Lookalike")
    page.wait_for_function("document.getElementById('ready').textContent.includes('images')")
    assert "24 images" in page.text_content("#ready")

    # 1. A photo of product 3 that the catalog has never seen: product 3 comes first.
    page.set_input_files("#file", str(_photo(tmp_path, 3, 7)))
    _wait_for_status(page, "Photo:")
    cards = _cards(page)
    assert cards and cards[0]["product"] == "p3", cards
    assert len({c["product"] for c in cards}) == len(cards)  # grouped by product
    assert all(c["score"].startswith("score ") and len(c["score"].split(".")[1]) == 3 for c in cards)
    timings = page.text_content("#timings")
    assert "embed" in timings and "search" in timings and "plan index" in timings

    # 2. Keyword refinement re-sends the same photo with q: only the keyword hits remain.
    page.fill("#q", "lamp number 5")
    page.press("#q", "Enter")
    _wait_for_status(page, "lamp number 5")
    cards = _cards(page)
    assert [c["product"] for c in cards] == ["p5"], cards
    assert "plan exact, 3 candidates" in page.text_content("#timings")

    # 3. A click on a card asks for more like this item: other products, as many as asked.
    page.fill("#k", "5")
    page.click("#results .card >> nth=0")
    _wait_for_status(page, "More like")
    cards = _cards(page)
    assert len(cards) == 5 and all(c["product"] != "p5" for c in cards), cards
    page.wait_for_function(
        "[...document.querySelectorAll('#results .card img')].every(i => i.complete && i.naturalWidth > 0)")

    # 4. The screenshot shows a page with a grid of real product pictures.
    shot = Image.open(io.BytesIO(page.screenshot(full_page=False))).convert("RGB")
    assert shot.size == (VIEWPORT["width"], VIEWPORT["height"])
    assert max(ImageStat.Stat(shot).stddev) > 10  # not blank
    box = page.locator("#results").bounding_box()
    assert box and box["width"] > 300 and box["height"] > 100
    grid = shot.crop((int(box["x"]), int(box["y"]), int(box["x"] + box["width"]),
                      int(min(box["y"] + box["height"], VIEWPORT["height"]))))
    assert max(ImageStat.Stat(grid).stddev) > 20
    assert len(grid.getcolors(maxcolors=1 << 20) or []) > 200  # drawn products, text, borders: many colours


def test_errors_from_the_service_are_shown(page, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "not-a-photo.jpg"
    bad.write_bytes(b"hello, not an image")
    page.set_input_files("#file", str(bad))
    page.wait_for_function("document.body.dataset.state === 'error'")
    assert page.text_content("#error").startswith("not_an_image:")
    assert page.locator("#results .card").count() == 0


def test_boxes_are_drawn_and_a_dragged_box_searches_again(page, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    photo = busy_background(5, (400, 300))
    cut = product_cutout(2, 8).resize((120, 120))
    photo.paste(cut, (240, 130), cut)
    path = tmp_path / "shopper.jpg"
    photo.save(path, quality=92)

    # 1. The service finds the product: its box is drawn (solid) over the photo.
    page.set_input_files("#file", str(path))
    _wait_for_status(page, "Photo:")
    page.wait_for_selector("#stage .objbox.active")
    active = page.locator("#stage .objbox.active")
    assert active.get_attribute("data-source") == "detected"
    x, y, w, h = (int(v) for v in active.get_attribute("data-box").split(","))
    assert x + w / 2 > 200 and y + h / 2 > 110  # around the pasted product, in photo pixels

    # 2. Dragging a box over the top-left corner searches that region instead.
    frame = page.locator("#photo-view").bounding_box()
    assert frame
    page.mouse.move(frame["x"] + 5, frame["y"] + 5)
    page.mouse.down()
    page.mouse.move(frame["x"] + frame["width"] * 0.4, frame["y"] + frame["height"] * 0.4, steps=5)
    page.mouse.up()
    _wait_for_status(page, "(your box)")
    page.wait_for_selector("#stage .objbox.active[data-source='caller']")
    x, y, w, h = (int(v) for v in page.get_attribute("#stage .objbox.active", "data-box").split(","))
    assert x < 20 and y < 20 and 100 < w < 200 and 80 < h < 150
    assert _cards(page)
