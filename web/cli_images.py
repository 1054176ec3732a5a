"""`cargohold image-keys ...` and `cargohold project content-trust ...`: the cosign content-trust policy.

`register(main)` adds the groups. A thin layer over `registry.image_trust`,
working on the data directory directly while the server may be running.
Image-signing keys are a list apart from the bundle-signing keys of
`cargohold keys` (see registry/image_trust.py for why).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from web.cli import _config, data_dir_option, existing_data_dir_option
from web.cli_release import _who


def _trust(data_dir: Path | None):  # type: ignore[no-untyped-def]
    from registry.image_trust import ImageTrust
    from web.app import build_services

    services = build_services(_config(data_dir=data_dir))
    return services, ImageTrust(services.registry)


@click.group("image-keys")
def image_keys() -> None:
    """Public keys whose cosign signatures content-trust projects accept."""


@image_keys.command("add")
@click.argument("pem", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--description", "-d", default="", help="Whose key this is (shown by `image-keys list`).")
@data_dir_option
def add_cmd(pem: Path, description: str, data_dir: Path | None) -> None:
    """Trust the PEM public key PEM (e.g. cosign.pub) for image signatures."""
    from registry.cosign import KeyRefused

    with pem.open("rb") as f:
        data = f.read(1 << 20)
    services, trust = _trust(data_dir)
    try:
        entry = trust.add_key(data, description)
    except KeyRefused as exc:
        raise click.ClickException(f"key refused: {exc}") from None
    services.audit.record(_who(), "create", "image_signing_key", entry.id, "local")
    click.echo(f"trusted {entry.key_type} image-signing key {entry.id}"
               + (f" ({entry.description})" if entry.description else ""))


@image_keys.command("list")
@existing_data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with the PEM public keys).")
def list_cmd(data_dir: Path | None, as_json: bool) -> None:
    """The keys whose cosign signatures this appliance accepts."""
    _, trust = _trust(data_dir)
    entries = trust.list_keys()
    if as_json:
        click.echo(json.dumps([e.to_json() for e in entries], indent=2))
        return
    if not entries:
        click.echo("no image-signing keys: add one with `cargohold image-keys add cosign.pub --description ...`",
                   err=True)
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.added_at))
        click.echo(f"{e.id}  {e.key_type:<11} {when}  {e.description}")


@image_keys.command("remove")
@click.argument("key_id")
@existing_data_dir_option
def remove_cmd(key_id: str, data_dir: Path | None) -> None:
    """Stop trusting the image-signing key KEY_ID (full id or unique prefix)."""
    from registry.cosign import KeyRefused

    services, trust = _trust(data_dir)
    try:
        entry = trust.remove_key(key_id)
    except KeyRefused as exc:
        raise click.ClickException(str(exc)) from None
    services.audit.record(_who(), "delete", "image_signing_key", entry.id, "local")
    click.echo(f"removed image-signing key {entry.id}" + (f" ({entry.description})" if entry.description else ""))


@click.group()
def project() -> None:
    """Harbor projects' policies."""


@project.command("content-trust")
@click.argument("name")
@click.argument("state", type=click.Choice(["on", "off", "show"]), default="show")
@existing_data_dir_option
def content_trust_cmd(name: str, state: str, data_dir: Path | None) -> None:
    """Serve only cosign-signed images from project NAME (on), or any image (off); `show` prints the setting."""
    from registry.image_trust import CONTENT_TRUST_COSIGN

    services, trust = _trust(data_dir)
    found = services.access.projects.get(name)
    if found is None:
        raise click.ClickException(f"project {name} does not exist")
    if state != "show":
        trust.set_metadata(found.id, {CONTENT_TRUST_COSIGN: "true" if state == "on" else "false"})
        services.audit.record(_who(), "update", "project", name, "local")
    value = trust.metadata(found.id).get(CONTENT_TRUST_COSIGN, "false")
    click.echo(f"project {name}: {CONTENT_TRUST_COSIGN}={value}")


def register(group: click.Group) -> None:
    group.add_command(image_keys)
    group.add_command(project)
