"""`cargohold tag ...`: protected tags (released or immutable) and their audited one-shot overrides.

`register(main)` adds the `tag` group. A thin layer over `registry.protection`,
working on the data directory directly while the server may be running.
Grants from here name the operating-system user with ``(cli)`` and the
source ``local``, as `web.cli_release` does.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from web.cli import _config, existing_data_dir_option
from web.cli_release import _who


@click.group()
def tag() -> None:
    """Protected tags: allow one change of a released or immutable tag (audited)."""


@tag.command("override")
@existing_data_dir_option
@click.argument("reference")
@click.option("--reason", required=True, help="Why the protected tag must change (goes to the audit log).")
@click.option("--ttl", "ttl", type=int, default=900, show_default=True,
              help="Seconds the one-shot grant stays usable.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def override_cmd(data_dir: Path | None, reference: str, reason: str, ttl: int, as_json: bool) -> None:
    """Allow ONE push or delete of the protected tag REFERENCE (project/repository:tag) within --ttl seconds."""
    from registry.db import write_transaction
    from registry.protection import OverrideRefused
    from web.app import build_services

    repository, sep, name = reference.rpartition(":")
    if not sep or not repository or "/" in name or "@" in reference:
        raise click.UsageError(f"{reference!r} is not project/repository:tag")
    services = build_services(_config(data_dir=data_dir))
    try:
        with write_transaction(services.registry.db) as db:
            grant = services.registry.protection.grant_override(db, repository, name, reason, _who(), "local", ttl)
    except OverrideRefused as exc:
        raise click.ClickException(exc.message) from None
    if as_json:
        click.echo(json.dumps(grant.to_json(), indent=2))
        return
    click.echo(f"override {grant.id}: one push or delete of {repository}:{name} is allowed until "
               f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(grant.expires_at))} UTC (audited)")


def register(group: click.Group) -> None:
    group.add_command(tag)
