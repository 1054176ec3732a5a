"""Fixtures for the UI tests: an appliance of their own, one headless chromium per module, a signing key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.appliance import Appliance, start_appliance
from tests.web.uiutil import CHROMIUM, CHROMIUM_ARGS, require_browser, signing_key


@pytest.fixture(scope="module")
def ui_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    """An appliance for one UI test module (its catalog is the module's alone)."""
    app = start_appliance(tmp_path_factory.mktemp("ui") / "data")
    yield app
    app.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # launch() runs chromium on a fresh temporary profile of its own, removed at close.
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1366, "height": 800})
    ctx.set_default_timeout(30_000)
    yield ctx
    ctx.close()


@pytest.fixture(scope="module")
def key_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return signing_key(tmp_path_factory.mktemp("keys"))
