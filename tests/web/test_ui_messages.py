"""The UI's plain words (web/ui/messages.py): every refusal code has them, findings read as sentences, and the
command-line hints the core appends never reach a page."""

from __future__ import annotations

import re
from pathlib import Path

from web.ui import messages

DOCS = Path(__file__).resolve().parents[2] / "docs" / "bundle-import.md"


def test_every_documented_import_refusal_code_has_a_meaning_and_a_next_step() -> None:
    refusals = DOCS.read_text().split("## Refusals", 1)[1].split("\n## ", 1)[0]
    codes = set(re.findall(r"`([A-Z_]+)`", refusals))
    assert {"SIGNATURE", "DISK_FULL", "INTERRUPTED"} <= codes
    for code in codes:
        words = messages.import_refusal(code)
        assert code in messages.IMPORT_REFUSALS, code
        assert words["meaning"].endswith(".") and words["next"].endswith("."), code
        assert "--" not in words["meaning"] + words["next"] and "cargohold " not in words["next"], code


def test_cli_hints_are_dropped_from_core_messages() -> None:
    assert messages.plain("the bundle is signed by key sha256:ab, which this appliance does not trust "
                          "(add it with `cargohold keys add`)") == ("the bundle is signed by key sha256:ab, which "
                                                                    "this appliance does not trust")
    assert messages.plain("release 3 is not ready; fix the content or promote with --force and a reason") == (
        "release 3 is not ready")
    assert messages.plain("run cargohold --help") == "The appliance refused the request."
    assert messages.release_refusal("NOT_READY", "promote with --force").startswith("This release is not ready")
    assert messages.release_refusal("CONFLICT", "release 2 (web 1) is already promoted") == (
        "Release 2 (web 1) is already promoted.")


def test_findings_in_plain_words() -> None:
    ref = "docker.io/x/y:1"
    assert messages.finding_text({"finding": "platform_missing", "reference": ref, "platforms": ["linux/amd64"],
                                  "missing": ["arm64", "arm/v7"]}) == (
        f"Image {ref} is not built for this cluster: it is built for linux/amd64; the cluster needs linux/arm64, "
        "linux/arm/v7. Import a build of it for the cluster's platforms.")
    assert messages.finding_text({"finding": "blob_missing", "reference": ref, "missing": ["sha256:a", "sha256:b"]}
                                 ).startswith(f"Image {ref} is incomplete: 2 of its layers are missing")
    assert messages.finding_text({"finding": "tag_missing", "reference": ref, "kind": "chart"}).startswith(
        f"Chart {ref} is missing")
    assert "wrong build" in messages.finding_text({"finding": "digest_mismatch", "reference": ref})
    assert messages.variable_text({"name": "ntp", "profile": "infra"}).startswith(
        "Variable ntp (profile infra) has no default")
