"""Every UI page fits a 390 px phone and a 1366x768 laptop, with no serious or critical axe-core violation; the
focus ring is visible (2px or more, 3:1 against what is behind it); "Cancel upload" shows only while uploading.

The pages are enumerated from the app's URL map (tests/web/screens.py), with sample data behind them: a trusted
key, three releases of one bundle (two promoted in turn, the third staged), a NOT READY cluster definition, a robot
account and an import job uploaded through the browser. Screenshots of every page at both sizes go to
test-artifacts/ui/.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.appliance import Appliance
from tests.bundles.buildutil import cargohold
from tests.bundles.clusterdefs import build_archive, simple_definition
from tests.web.screens import (
    DESKTOP,
    NOT_PAGES,
    PHONE,
    doc_screenshot,
    fill_rule,
    focus_ring_problems,
    install_axe,
    serious_violations,
    sideways_overflow,
    ui_get_rules,
)
from tests.web.uiutil import build_bundle, login, screenshot, signed_in

REF = "docker.io/cargotest/screens:stable"
REPO = "spectro-images/docker.io/cargotest/screens"
DEFINITION = "edge-screens"
# Pages whose screenshots illustrate docs/ui.md (written with CARGOHOLD_DOC_SCREENSHOTS=1): (endpoint, size) -> name.
DOC_SHOTS = {
    ("ui_session.login", "phone"): "sign-in", ("ui.dashboard", "desktop"): "dashboard",
    ("ui.dashboard", "phone"): "dashboard", ("ui.upload", "desktop"): "upload",
    ("ui.import_detail", "desktop"): "import-report", ("ui.import_detail", "phone"): "import-report",
    ("ui.definition", "desktop"): "readiness", ("ui_releases.releases_page", "desktop"): "releases",
    ("ui_releases.release", "desktop"): "release", ("ui_releases.release", "phone"): "release",
    ("ui_maint.maintenance", "desktop"): "maintenance", ("ui_maint.edge_config", "phone"): "edge-config",
}

# A command of the appliance's CLI named in a page's text.
_CLI_WORDS = re.compile(r"\bcargohold (?:admin|bundle|clusterdef|disk|gc|image-keys|inventory|keys|mirror-config|"
                        r"project|release|scrub|seed|serve|tag|tls)\b")


def _wait_job(page: Any) -> str:
    page.wait_for_url(re.compile(r".*/ui/imports/[0-9a-f]{32}$"), timeout=60_000)
    page.wait_for_function("() => ['done', 'failed'].includes(document.getElementById('job-state').textContent)",
                           timeout=60_000)
    return page.url.rsplit("/", 1)[1]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def sample(ui_app: Appliance, browser: Any, key_pair: tuple[Path, Path],
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Sample data behind every page; returns the values for the URL map's placeholders."""
    tmp = tmp_path_factory.mktemp("screens")
    private, public = key_pair
    cargohold("keys", "add", public, "--data-dir", ui_app.data_dir, check=False)  # may be trusted already
    # Releases 1 and 2 promoted in turn (so there is one to roll back to), release 3 staged on top.
    for version in ("1", "2"):
        bundle, _ = build_bundle(tmp, private, "screens", version, {REF: 60_000}, seed=500 + int(version))
        imported = json.loads(cargohold("bundle", "import", bundle, "--data-dir", ui_app.data_dir, "--json",
                                        "--quiet").stdout)
        cargohold("release", "promote", str(imported["release"]["id"]), "--data-dir", ui_app.data_dir)
    third, _ = build_bundle(tmp, private, "screens", "3", {REF: 60_000, "docker.io/cargotest/extra:1": 30_000},
                            seed=601)
    archive = build_archive(tmp / "edge.tgz", simple_definition(DEFINITION, [REF, "docker.io/cargotest/absent:1"]))
    cargohold("clusterdef", "sign", archive, "--sign-key", private, "--detached")
    cargohold("clusterdef", "import", "--data-dir", ui_app.data_dir, archive, "--signature", f"{archive}.sig")

    session, token = signed_in(ui_app)
    r = session.post(f"{ui_app.url}/ui/robots", data={"name": "screens-puller", "description": "edge pulls",
                                                      "duration": "-1", "csrf_token": token}, timeout=10)
    assert r.status_code == 200 and "screens-puller" in r.text

    # The third release arrives through the browser, so there is an import job with a report.
    ctx = browser.new_context(viewport=DESKTOP)
    page = ctx.new_page()
    login(page, ui_app)
    page.wait_for_url(f"{ui_app.url}/ui/")
    page.goto(f"{ui_app.url}/ui/upload")
    page.get_by_label("Bundle file").set_input_files(str(third))
    page.get_by_role("button", name="Upload and import").click()
    job = _wait_job(page)
    assert page.locator("#job-state").text_content() == "done"
    ctx.close()

    releases = json.loads(cargohold("release", "list", "--data-dir", ui_app.data_dir, "--json").stdout)
    staged = max(int(x["id"]) for x in releases["releases"])
    return {"job_id": job, "release_id": str(staged), "definition": DEFINITION, "repository": REPO,
            "check_id": "1", "robot_id": "1"}


def _pages(app: Appliance, sample: dict[str, str], tmp_path: Path) -> list[tuple[str, str]]:
    """(endpoint, URL) of every UI page, filled with the sample data; fails naming any route it cannot fill."""
    urls, unfilled = [], []
    for endpoint, rule in ui_get_rules(tmp_path):
        values = dict(sample, name=sample["definition"] if "definitions" in rule else sample["repository"])
        url = fill_rule(rule, values)
        if url is None:
            unfilled.append(f"{rule} ({endpoint})")
            continue
        if endpoint == "ui.artifact":  # its subject is in the query string
            url += f"?repository={REPO}&reference=stable"
        urls.append((endpoint, url))
    assert not unfilled, f"routes with placeholders this walk has no sample value for (add them): {unfilled}"
    assert len(urls) >= 16 and ("ui_session.login", "/ui/login") in urls  # the walk really found the pages
    return urls


def _slug(endpoint: str) -> str:
    """A file name for a page's screenshot: its endpoint (ui.import_detail -> ui-import-detail)."""
    return re.sub(r"[^a-z0-9]+", "-", endpoint.lower())


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_every_page_fits_the_screen_with_no_serious_axe_violation(
        ui_app: Appliance, browser: Any, sample: dict[str, str], size: str, tmp_path: Path) -> None:
    viewport = PHONE if size == "phone" else DESKTOP
    session, _ = signed_in(ui_app)
    problems: list[str] = []
    walked = 0
    for signed in (False, True):  # the sign-in page as a stranger sees it, then every page signed in
        ctx = browser.new_context(viewport=viewport)
        ctx.set_default_timeout(30_000)
        install_axe(ctx, ui_app.url)
        page = ctx.new_page()
        if signed:
            login(page, ui_app)
            page.wait_for_url(f"{ui_app.url}/ui/")
            urls = [(e, u) for e, u in _pages(ui_app, sample, tmp_path) if u != "/ui/login"]
        else:
            urls = [("ui_session.login", "/ui/login")]
        for endpoint, url in urls:
            head = session.get(f"{ui_app.url}{url}", timeout=30, stream=True)
            head.close()
            assert head.status_code < 500, f"{url} answered {head.status_code}"
            if not head.headers.get("Content-Type", "").startswith("text/html"):
                continue  # a download, not a page
            page.goto(f"{ui_app.url}{url}")
            page.wait_for_load_state("networkidle")
            walked += 1
            screenshot(page, f"screens-{size}-{_slug(endpoint)}")
            if (endpoint, size) in DOC_SHOTS:
                doc_screenshot(page, f"{DOC_SHOTS[endpoint, size]}-{size}")
            if (wide := sideways_overflow(page)) is not None:
                problems.append(f"{url} scrolls sideways: {wide}")
            problems += [f"{url}: {v}" for v in serious_violations(page, ui_app.url)]
            # A technician at the site has no shell: no page sends them to a command (issue 13).
            shell = _CLI_WORDS.search(page.inner_text("main"))
            if shell:
                problems.append(f"{url} names a command: {shell.group()!r}")
        ctx.close()
    assert walked >= 16
    assert problems == [], "\n".join(problems)


def test_states_have_no_serious_axe_violation(ui_app: Appliance, browser: Any, sample: dict[str, str]) -> None:
    """The states a page goes through: a refused sign-in, the promote dialog open, a refused form."""
    problems: list[str] = []
    for viewport in (DESKTOP, PHONE):
        ctx = browser.new_context(viewport=viewport)
        install_axe(ctx, ui_app.url)
        page = ctx.new_page()
        page.goto(f"{ui_app.url}/ui/login")
        page.get_by_label("Username").fill("nobody")
        page.get_by_label("Password").fill("wrong-password")
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_load_state()
        assert page.locator(".flash.error").count() == 1
        problems += [f"refused sign-in: {v}" for v in serious_violations(page, ui_app.url)]

        login(page, ui_app)
        page.wait_for_url(f"{ui_app.url}/ui/")
        release = sample["release_id"]
        page.goto(f"{ui_app.url}/ui/releases/{release}")
        page.get_by_role("button", name=re.compile(rf"^Promote #{release}")).click()
        dialog = page.get_by_role("dialog")
        assert dialog.is_visible()
        if viewport is PHONE:
            assert sideways_overflow(page) is None
            screenshot(page, "screens-phone-promote-dialog")
            doc_screenshot(page, "promote-dialog-phone")
        problems += [f"promote dialog: {v}" for v in serious_violations(page, ui_app.url)]
        dialog.get_by_role("button", name="Cancel").click()

        page.goto(f"{ui_app.url}/ui/keys")
        page.get_by_label("Public key (PEM)").fill("not a key")
        page.get_by_role("button", name="Trust this key").click()
        page.wait_for_load_state()
        assert page.locator(".flash.error").count() == 1
        problems += [f"refused key: {v}" for v in serious_violations(page, ui_app.url)]
        ctx.close()
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("path", ["/ui/", "/ui/upload", "/ui/releases/{release_id}", "/ui/keys",
                                  "/ui/definitions/{definition}"])
def test_focus_ring_is_at_least_2px_and_3_to_1(ui_app: Appliance, browser: Any, sample: dict[str, str],
                                               path: str) -> None:
    ctx = browser.new_context(viewport=DESKTOP)
    page = ctx.new_page()
    login(page, ui_app)
    page.wait_for_url(f"{ui_app.url}/ui/")
    page.goto(f"{ui_app.url}{path.format(**sample)}")
    focused, problems = focus_ring_problems(page)
    ctx.close()
    assert focused >= 8  # the walk reached the header's links and the page's own controls
    assert problems == [], "\n".join(problems)


def test_cancel_upload_shows_only_while_uploading(ui_app: Appliance, browser: Any, key_pair: tuple[Path, Path],
                                                  tmp_path: Path) -> None:
    private, _ = key_pair
    bundle, _ = build_bundle(tmp_path, private, "cancel-shown", "1", {"docker.io/cargotest/held:1": 1_000_000},
                             seed=701)
    ctx = browser.new_context(viewport=PHONE)
    ctx.add_init_script("window.CARGOHOLD_CHUNK_SIZE = 262144;")
    install_axe(ctx, ui_app.url)
    page = ctx.new_page()
    login(page, ui_app)
    page.wait_for_url(f"{ui_app.url}/ui/")
    page.goto(f"{ui_app.url}/ui/upload")
    cancel = page.get_by_role("button", name="Cancel upload")
    assert page.locator("#cancel").evaluate("e => getComputedStyle(e).display") == "none"
    assert not cancel.is_visible()

    held: list[Any] = []
    page.route("**/api/v1/uploads/*",  # PATCHes are held: the upload stays in progress until released
               lambda route: held.append(route) if route.request.method == "PATCH" else route.continue_())
    page.get_by_label("Bundle file").set_input_files(str(bundle))
    page.get_by_role("button", name="Upload and import").click()
    page.wait_for_function("() => !document.getElementById('cancel').hidden")
    assert cancel.is_visible()
    assert sideways_overflow(page) is None
    screenshot(page, "screens-phone-uploading")
    doc_screenshot(page, "uploading-phone")
    problems = serious_violations(page, ui_app.url)
    assert problems == [], "\n".join(problems)

    cancel.click()
    page.locator("#confirm-ok").click()
    for route in held:
        route.abort("connectionreset")
    page.get_by_text("Upload cancelled.").wait_for()
    assert not cancel.is_visible()
    ctx.close()


def test_what_the_walk_leaves_out_is_not_a_page(ui_app: Appliance, sample: dict[str, str], tmp_path: Path) -> None:
    """Every GET route under NOT_PAGES really answers JSON, not a page the walk should have checked."""
    from web.app import create_app
    from web.config import Config

    app = create_app(Config(data_dir=tmp_path / "data", admin_password="Unused-Secret-1"))
    left_out = [r.rule for r in app.url_map.iter_rules() if "GET" in (r.methods or set())
                and any(r.rule.startswith(prefix) for prefix in NOT_PAGES)]
    assert left_out, "NOT_PAGES matches no route: remove it"
    session, _ = signed_in(ui_app)
    for rule in left_out:
        url = fill_rule(rule, sample)
        assert url is not None, f"{rule}: no sample value for its placeholders"
        r = session.get(f"{ui_app.url}{url}", timeout=10)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json"), (rule, r.status_code)
