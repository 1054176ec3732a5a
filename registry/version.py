"""The appliance's version: one place, read by packaging, the CLI, the UI, metrics and the Harbor API.

pyproject.toml takes its version from here (``[tool.setuptools.dynamic]``),
so an editable install never reports a stale number after a bump. Released
versions are tagged ``v<VERSION>`` in git; a data directory records which
version last migrated it (issue 14, upgrades).
"""

from __future__ import annotations

VERSION = "0.3.0"
