"""Harbor labels in the operator UI: shown where artifacts are listed and on the artifact page (chromium)."""

from __future__ import annotations

import json
from typing import Any

from tests.appliance import Appliance
from tests.registry.harborapi import Harbor
from tests.registry.v2client import V2
from tests.web.uiutil import login, screenshot
from web.ui.pages import human_bytes


def test_labels_show_on_the_repository_and_artifact_pages(ui_app: Appliance, context: Any) -> None:
    admin = Harbor(ui_app, ui_app.admin)
    project = admin.create_project()
    v2 = V2(ui_app)
    labelled = v2.push_image(f"{project}/app", "1", seed=b"labelled")
    v2.push_image(f"{project}/app", "2", seed=b"plain")
    r = admin("POST", "/labels", json={"name": "approved", "scope": "g", "description": "passed site QA"})
    assert r.status_code == 201, r.text
    label_id = int(r.headers["Location"].rsplit("/", 1)[1])
    assert admin("POST", f"/projects/{project}/repositories/app/artifacts/1/labels",
                 json={"id": label_id}).status_code == 200

    page = context.new_page()
    login(page, ui_app)
    page.goto(f"{ui_app.url}/ui/repositories/{project}/app")
    table = page.locator("#artifacts")
    assert table.get_by_role("columnheader", name="Labels").count() == 1
    row = table.get_by_role("row").filter(has=page.get_by_role("link", name="1", exact=True))
    chip = row.locator(".label")
    assert chip.inner_text() == "approved" and chip.get_attribute("title") == "passed site QA"
    other = table.get_by_role("row").filter(has=page.get_by_role("link", name="2", exact=True))
    assert other.locator(".label").count() == 0 and "none" in other.inner_text()
    screenshot(page, "ui-labels-repository")

    page.goto(f"{ui_app.url}/ui/artifact?repository={project}/app&reference={labelled.digest}")
    assert page.locator("#artifact-labels").inner_text().strip() == "approved"
    # the size shown is Harbor's (the API's): manifest, config and layer, each counted once
    manifest = json.loads(labelled.body)
    size = len(labelled.body) + manifest["config"]["size"] + sum(d["size"] for d in manifest["layers"])
    assert admin("GET", f"/projects/{project}/repositories/app/artifacts/1").json()["size"] == size
    assert f"{human_bytes(size)} (manifest, config and layers)" in page.locator("#artifact-detail").inner_text()
    # taking the label off shows at once
    assert admin("DELETE", f"/projects/{project}/repositories/app/artifacts/1/labels/{label_id}").status_code == 200
    page.reload()
    assert page.locator("#artifact-labels").inner_text().strip() == "none"
