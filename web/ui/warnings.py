"""The dashboard's warnings: conditions a technician must fix before they cause a failure.

One function, `dashboard_warnings`, looks at the appliance as it is now (no
stored verdicts: a warning disappears as soon as its cause is fixed) and
returns what ``web/templates/ui/_warnings.html`` shows above the dashboard:

- no trusted signing key: every signed bundle would be refused;
- free space close to the reserve that uploads and imports keep free, or
  already below it (writes are then refused with "insufficient storage");
- a stored cluster definition that is NOT READY now (its readiness check is
  run live, without recording it, as the definition's page does).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import url_for

from bundles.check import run_check
from bundles.clusterdef import DefinitionError, DefinitionNotFound
from registry.names import parse_mapping_rules

if TYPE_CHECKING:
    from web.app import Services
    from web.ui import UiServices

# Warn about free space once less than this is left above the reserve (or less than the reserve itself,
# if that is larger): one more bundle of a typical size would fail.
NEAR_RESERVE_BYTES = 1 << 30
# At most this many definitions are checked per dashboard view, so a site with very many stays fast.
MAX_DEFINITIONS_CHECKED = 50


@dataclass(frozen=True)
class Warning:
    """One dashboard warning: an id for the page (and tests), a headline, what to do, and where to do it."""

    id: str
    title: str
    text: str
    link_text: str = ""
    link_url: str = ""


def _size(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB" if abs(n) >= 1 << 30 else f"{n / (1 << 20):.0f} MiB"


def keys_warning(trusted_keys: int) -> Warning | None:
    if trusted_keys:
        return None
    return Warning("warn-keys", "No signing key is trusted",
                   "Every signed bundle and cluster definition will be refused until you add the public key of "
                   "the build site that signs them.", "Add a trusted key", url_for("ui.keys"))


def space_warning(free: int, reserve: int) -> Warning | None:
    headroom = free - reserve
    if headroom >= max(NEAR_RESERVE_BYTES, reserve):
        return None
    if headroom <= 0:
        title = "The data volume is full: uploads and imports are refused"
        text = (f"Only {_size(free)} is free, and {_size(reserve)} must stay free. Remove content that is no longer "
                "needed and reclaim its space, or give the appliance a larger data volume.")
    else:
        title = "Free space is running out"
        text = (f"{_size(free)} is free, and {_size(reserve)} must stay free: uploads and imports larger than "
                f"{_size(headroom)} will be refused. Remove content that is no longer needed and reclaim its space, "
                "or give the appliance a larger data volume.")
    return Warning("warn-space", title, text)


def definitions_warning(not_ready: list[str]) -> Warning | None:
    if not not_ready:
        return None
    names = ", ".join(not_ready)
    one = len(not_ready) == 1
    return Warning("warn-definitions", f"{'A cluster definition is' if one else 'Cluster definitions are'} NOT READY",
                   f"{names}: {'its' if one else 'their'} cluster cannot form from this appliance yet, because "
                   "images or files it needs are missing. Open the definition to see what is missing, then import "
                   "the bundle that carries it.",
                   f"Open {not_ready[0]}" if one else "See what each one is missing",
                   url_for("ui.definition", name=not_ready[0]) if one else url_for("ui.definitions"))


def not_ready_definitions(ui: UiServices, services: Services) -> list[str]:
    """Names of stored definitions whose readiness check, run now, says NOT READY."""
    config = services.config
    definitions = ui.definitions
    rules = parse_mapping_rules(config.mapping_rules)
    names = []
    for name in definitions.names()[:MAX_DEFINITIONS_CHECKED]:
        try:
            result = run_check(definitions, services.registry, name, config.project, rules, record=False)
        except (DefinitionError, DefinitionNotFound):  # removed meanwhile, or unreadable: its own page says so
            continue
        if not result["ready"]:
            names.append(name)
    return names


def dashboard_warnings(ui: UiServices, services: Services) -> list[Warning]:
    """What the dashboard warns about right now, most urgent first."""
    config = services.config
    free = shutil.disk_usage(config.paths.root).free
    found = [space_warning(free, config.import_reserve_bytes),
             keys_warning(len(ui.imports.trust.list())),
             definitions_warning(not_ready_definitions(ui, services))]
    return [w for w in found if w is not None]
