"""Wiring of bundle import for the shell: configuration to policy, and the objects an import needs.

The CLI (`web.cli_import`) and the HTTP API (`bundles.api`, registered by
`web.app`) run the same core, `bundles.importer.Importer`, built here.
"""

from __future__ import annotations

from dataclasses import dataclass

from bundles.importer import Importer, ImportPolicy
from bundles.jobs import ImportJobs
from bundles.trust import TrustStore
from registry.model import Registry
from registry.names import parse_mapping_rules
from web.config import Config
from web.storage import blob_store


def import_policy(config: Config) -> ImportPolicy:
    """The import policy `config` sets; raises ValueError for malformed mapping rules."""
    return ImportPolicy(
        project=config.project,
        allow_unsigned=config.allow_unsigned_bundles,
        max_bytes=config.bundle_max_bytes,
        max_unpacked_bytes=config.bundle_max_unpacked_bytes,
        max_ratio=config.bundle_max_ratio,
        reserve_bytes=config.import_reserve_bytes,
        mapping_rules=parse_mapping_rules(config.mapping_rules),
    )


@dataclass(frozen=True)
class ImportServices:
    """Everything an import needs over one data directory."""

    importer: Importer
    trust: TrustStore
    jobs: ImportJobs


def import_services(config: Config, registry: Registry | None = None) -> ImportServices:
    registry = registry or Registry(config.paths, blob_store(config), max_manifest_bytes=config.max_manifest_bytes)
    trust = TrustStore(config.paths)
    return ImportServices(Importer(registry, trust, import_policy(config)), trust, ImportJobs(config.paths))
