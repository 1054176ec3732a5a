"""Plain words for the operator UI: import refusals, release refusals and readiness findings.

The core (`bundles.importer`, `bundles.releases`, `bundles.check`) words its
messages for the command line and the JSON API, naming flags and commands a
technician in a browser has no use for. The UI maps their codes to its own
sentences here: what happened, that nothing was changed, and what to do
next. The CLI keeps its text.
"""

from __future__ import annotations

import re
from typing import Any

from registry.platforms import Platform

# Import refusal code -> (what it means, what to do next). Codes: docs/bundle-import.md, "Refusals".
IMPORT_REFUSALS: dict[str, tuple[str, str]] = {
    "SIGNATURE": ("The bundle's signature is not valid, or it was signed with a key this appliance does not trust.",
                  "Ask for a bundle signed with a trusted key, or trust its key on the Trusted keys page, then "
                  "upload it again."),
    "UNSIGNED": ("The bundle is not signed, and this appliance accepts only signed bundles.",
                 "Ask the build site for a signed bundle."),
    "UNSAFE_MEMBER": ("The bundle holds a file this appliance never accepts (an unsafe path or a link).",
                      "Ask the build site to build the bundle again."),
    "UNLISTED_MEMBER": ("The bundle holds a file its table of contents does not list.",
                        "Ask the build site to build the bundle again."),
    "SIZE_MISMATCH": ("A file in the bundle is not the size the bundle says: the file is damaged.",
                      "Copy or download the bundle again, then upload it again."),
    "DIGEST_MISMATCH": ("A file in the bundle does not match its checksum: the file is damaged.",
                        "Copy or download the bundle again, then upload it again."),
    "TRUNCATED": ("The bundle ends early: it was not copied completely, or a part is missing.",
                  "Copy the whole bundle (every part) again, then upload it again."),
    "LIMIT": ("The bundle is larger than this appliance accepts.",
              "Ask the build site for smaller bundles, or ask your administrator to raise the appliance's limits."),
    "DISK_FULL": ("There is not enough free space on the appliance for this bundle.",
                  "Free space (discard releases that will not be promoted, then collect garbage), then import again."),
    "MANIFEST_TOO_LARGE": ("The bundle's table of contents is larger than this appliance accepts.",
                           "Ask the build site to split the content into several bundles."),
    "MISSING_BASE": ("This is an update bundle, and the content it builds on is not on this appliance.",
                     "Import the earlier bundle it builds on first, then this one."),
    "MISSING_CONTENT": ("An image in the bundle needs content that is neither in the bundle nor on this appliance.",
                        "Ask the build site for a bundle that carries every image in full."),
    "IMAGE_UNSIGNED": ("An image in the bundle lacks the image signature this appliance requires.",
                       "Ask the build site for a bundle whose images are signed with a trusted key."),
    "QUOTA_EXCEEDED": ("The bundle would take a project past its storage quota.",
                       "Ask your administrator to raise the project's quota, or free space in the project (delete "
                       "what it no longer needs), then import again."),
    "FORMAT": ("The file is not a bundle this appliance can read.",
               "Check that you chose the right file (a .tar.zst bundle), then upload it again."),
    "BUSY": ("The same bundle is being imported right now.",
             "Wait for that import to finish, on the Imports page."),
    "STORAGE": ("The appliance's disk or database failed while importing.",
                "Try again; if it fails again, ask your administrator to look at the appliance."),
    "PUBLISH": ("The appliance's disk or database failed while importing.",
                "Try again; if it fails again, ask your administrator to look at the appliance."),
    "INTERRUPTED": ("The appliance stopped (restart or power loss) before the import finished.",
                    "Press Retry import (the file uploaded before is reused), or import the bundle again: the "
                    "work already done is reused."),
    "INTERNAL": ("The import failed on something unexpected.",
                 "Try again; if it fails again, ask your administrator to look at the appliance's log."),
}

NOTHING_IMPORTED = "nothing was imported; the appliance serves exactly what it served before."


def import_refusal(code: str | None) -> dict[str, str]:
    """The UI's words for an import refusal `code`: {meaning, next}."""
    meaning, step = IMPORT_REFUSALS.get(code or "", IMPORT_REFUSALS["INTERNAL"])
    return {"meaning": meaning, "next": step}


# Release refusal code -> the UI's sentence (the core's message names CLI flags).
RELEASE_REFUSALS: dict[str, str] = {
    "NOT_READY": "This release is not ready: its cluster definitions need content the appliance does not have "
                 "(see the findings on this page). Nothing was changed. To promote it anyway, type the reason in "
                 "the promotion dialog.",
    "REASON_REQUIRED": "Promoting a release that is not ready needs a reason. Nothing was changed: type the reason "
                       "in the promotion dialog.",
    "CONTENT_MISSING": "Some of this release's images are no longer on the appliance. Nothing was changed: import "
                       "its bundle again, then promote it.",
    "DISCARDED": "This release was discarded. Nothing was changed: import its bundle again to stage it again.",
    "PROMOTED": "This release is the one served now, so it cannot be discarded. Promote another release or roll "
                "back first.",
    "ROLLBACK_TARGET": "A roll back would return to this release, so it cannot be discarded.",
}

_CLI_HINT = re.compile(r"\s*\([^()]*(?:`|--|cargohold )[^()]*\)|;[^;]*(?:`|--\w|cargohold )[^;]*$")


def plain(text: str | None) -> str:
    """`text` without the command-line hints the core appends (a parenthesis or last clause naming a command)."""
    out = _CLI_HINT.sub("", text or "")
    return out if "--" not in out and "cargohold " not in out else "The appliance refused the request."


def release_refusal(code: str, message: str) -> str:
    """The UI's sentence for a refused release operation."""
    return RELEASE_REFUSALS.get(code) or plain(message[:1].upper() + message[1:]) + "."


def _needed(architectures: list[str]) -> str:
    return ", ".join(str(Platform.for_cluster(arch)) for arch in architectures)


def finding_text(f: dict[str, Any]) -> str:
    """One readiness finding (`bundles.check` JSON) in a sentence a technician can act on."""
    what = {"image": "Image", "chart": "Chart", "file": "File"}.get(f.get("kind") or "image", "Item")
    ref = f.get("reference", "")
    finding = f.get("finding")
    built = ", ".join(f.get("platforms") or []) or "no platform it names"
    if finding == "present":
        return f"{what} {ref} is on the appliance."
    if finding == "repository_missing":
        return f"{what} {ref} is missing: the appliance has no copy of it. Import a bundle that carries it."
    if finding == "tag_missing":
        return (f"{what} {ref} is missing: the appliance has other versions of it, but not this one. Import a bundle "
                "that carries it.")
    if finding == "digest_mismatch":
        return (f"{what} {ref} is the wrong build: the appliance has a different build than the one required. "
                "Import a bundle that carries the required build.")
    if finding == "platform_missing":
        return (f"{what} {ref} is not built for this cluster: it is built for {built}; the cluster needs "
                f"{_needed(list(f.get('missing') or []))}. Import a build of it for the cluster's platforms.")
    if finding == "blob_missing":
        count = len(f.get("missing") or [])
        lost = (f"{count} of its layers {'is' if count == 1 else 'are'} missing" if what == "Image" and count
                else "some of its content is missing")
        return f"{what} {ref} is incomplete: {lost} from the appliance's disk. Import the bundle that carries it again."
    return f"{what} {ref}: {plain(f.get('detail'))}"


def variable_text(v: dict[str, Any]) -> str:
    """A required variable without a default, in a sentence."""
    return (f"Variable {v.get('name')} (profile {v.get('profile')}) has no default: a value must be given for it "
            "when the cluster is created.")


# Cluster definition upload refusal code (bundles.clusterdef_trust) -> (what happened, what to do next).
DEFINITION_REFUSALS: dict[str, tuple[str, str]] = {
    "DEFINITION_UNSIGNED": ("The cluster definition is not signed, and this appliance accepts only signed "
                            "definitions.", "Ask the build site for a signed definition (or its signature file)."),
    "DEFINITION_KEY_UNTRUSTED": ("The cluster definition is signed with a key this appliance does not trust.",
                                 "Ask for a definition signed with a trusted key, or trust its key on the Trusted "
                                 "keys page."),
    "DEFINITION_SIGNATURE_INVALID": ("The cluster definition's signature does not match it: it was changed after "
                                     "signing, or the signature belongs to another file.",
                                     "Ask the build site for the definition and its signature again."),
}


def definition_refusal(code: str, message: str) -> str:
    """The UI's flash for a refused cluster definition upload: the code, what happened, nothing stored, next step."""
    meaning, step = DEFINITION_REFUSALS.get(code, (plain(message[:1].upper() + message[1:]) + ".",
                                                   "Check the file, then upload it again."))
    return f"Refused ({code}): {meaning} Nothing was stored. {step}"
