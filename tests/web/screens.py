"""Helpers for the screen tests: every UI page from the app's URL map, axe-core in the page, fit and focus checks.

The pages come from `app.url_map` (GET routes under /ui/), so a page added later
is walked without touching the tests; a route whose placeholders have no sample
value fails the walk with its name, so nobody's page is silently left out.

axe-core is a test asset vendored from npm (tests/web/vendor/axe-core/, see its
VERSION file), never fetched. The UI's CSP allows scripts from 'self' only, and
Playwright's `add_script_tag(path=...)` injects an inline script, which that CSP
blocks; so the file is served at a same-origin URL that Playwright answers itself
(`context.route`), and the page loads it under its real, unchanged CSP.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from web.app import create_app
from web.config import Config

AXE = Path(__file__).resolve().parent / "vendor" / "axe-core" / "axe.min.js"
AXE_PATH = "/__tests__/axe.min.js"  # answered by Playwright, never reaches the appliance
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1366, "height": 768}

# GET routes under /ui/ that are not pages, and why they are not walked.
NOT_PAGES = {
    "/ui/api/": "JSON endpoints the pages' scripts poll, not pages",
}


def ui_get_rules(tmp_path: Path) -> list[tuple[str, str]]:
    """(endpoint, rule) of every GET route under /ui/ in the app's URL map."""
    app = create_app(Config(data_dir=tmp_path / "data", admin_password="Unused-Secret-1"))
    rules = sorted({(r.endpoint, r.rule) for r in app.url_map.iter_rules()
                    if r.rule.startswith("/ui/") and "GET" in (r.methods or set())}, key=lambda x: x[1])
    return [(e, r) for e, r in rules if not any(r.startswith(prefix) for prefix in NOT_PAGES)]


def fill_rule(rule: str, values: dict[str, str]) -> str | None:
    """The rule with its placeholders filled from `values`; None when a placeholder has no value."""
    missing: list[str] = []

    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in values:
            missing.append(name)
            return ""
        return values[name]

    url = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", one, rule)
    return None if missing else url


def install_axe(context: Any, base_url: str) -> None:
    body = AXE.read_bytes()
    context.route(f"{base_url}{AXE_PATH}",
                  lambda route: route.fulfill(status=200, body=body, content_type="text/javascript"))


def serious_violations(page: Any, base_url: str) -> list[str]:
    """axe-core's serious and critical violations on the page as it is now, one line each (rule, element)."""
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.add_script_tag(url=f"{base_url}{AXE_PATH}")
    found = page.evaluate("""async () => {
        const r = await axe.run(document, {resultTypes: ['violations']});
        return r.violations.filter(v => v.impact === 'serious' || v.impact === 'critical').flatMap(v =>
            v.nodes.map(n => `${v.id} (${v.impact}) at ${n.target.join(' ')}: ${
                (n.failureSummary || '').replace(/\\s+/g, ' ').slice(0, 200)}`));
    }""")
    return list(found)


def sideways_overflow(page: Any) -> str | None:
    """None when the page does not scroll sideways; else the widths and the widest elements that stick out."""
    found = page.evaluate("""() => {
        const root = document.documentElement;
        if (root.scrollWidth <= window.innerWidth) return null;
        const wide = [...document.querySelectorAll('body *')]
            .filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5)
            .filter(e => !e.parentElement || e.parentElement.getBoundingClientRect().right <= window.innerWidth + 0.5)
            .slice(0, 5).map(e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') +
                (e.className && typeof e.className === 'string' ? '.' + e.className.trim().replace(/\\s+/g, '.') : ''));
        return `scrollWidth ${root.scrollWidth} > ${window.innerWidth}: ${wide.join(', ')}`;
    }""")
    return None if found is None else str(found)


def contrast(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    def lum(c: tuple[int, int, int]) -> float:
        def f(v: float) -> float:
            v /= 255
            return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4
        return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2])
    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


FOCUSED = """() => {
    const el = document.activeElement;
    if (!el || el === document.body) return null;
    const rgb = c => (c.match(/[\\d.]+/g) || []).map(Number);
    let bg = [255, 255, 255];
    for (let e = el.parentElement; e; e = e.parentElement) {
        const c = rgb(getComputedStyle(e).backgroundColor);
        if (c.length >= 3 && (c.length < 4 || c[3] > 0)) { bg = c.slice(0, 3); break; }
    }
    const s = getComputedStyle(el);
    const name = el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
        ' "' + (el.textContent || el.value || '').trim().slice(0, 30) + '"';
    return {name, style: s.outlineStyle, width: parseFloat(s.outlineWidth), color: rgb(s.outlineColor).slice(0, 3),
            bg, visible: el.matches(':focus-visible')};
}"""


def focus_ring_problems(page: Any, max_steps: int = 80) -> tuple[int, list[str]]:
    """Tab through the page: (elements focused, problems) where a problem is a focus ring thinner than 2px
    or under 3:1 against what is behind it."""
    problems: list[str] = []
    seen: set[str] = set()
    page.locator("body").click(position={"x": 1, "y": 1})  # start from the top, as a keyboard user would
    for _ in range(max_steps):
        page.keyboard.press("Tab")
        f = page.evaluate(FOCUSED)
        if f is None:
            continue
        if f["name"] in seen:
            break
        seen.add(f["name"])
        if f["style"] == "none" or f["width"] < 2:
            problems.append(f"{f['name']}: outline {f['style']} {f['width']}px")
            continue
        ratio = contrast(tuple(f["color"]), tuple(f["bg"]))
        if ratio < 3:
            problems.append(f"{f['name']}: ring rgb{tuple(f['color'])} on rgb{tuple(f['bg'])} is {ratio:.2f}:1")
    return len(seen), problems


DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
DOC_SHOTS_ENV = "CARGOHOLD_DOC_SCREENSHOTS"


def doc_screenshot(page: Any, name: str) -> Path | None:
    """With CARGOHOLD_DOC_SCREENSHOTS=1, save the page for docs/ui.md as docs/img/ui-<name>.png (the top of the
    page, at most 1.5 screens tall, to keep the committed images small); otherwise do nothing."""
    import os

    if os.environ.get(DOC_SHOTS_ENV) != "1":
        return None
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    path = DOCS_IMG / f"ui-{name}.png"
    size = page.viewport_size
    height = min(int(page.evaluate("() => document.documentElement.scrollHeight")), int(size["height"] * 1.5))
    page.screenshot(path=str(path), full_page=True, animations="disabled", caret="hide",
                    clip={"x": 0, "y": 0, "width": size["width"], "height": height})
    return path
