"""`cargohold clusterdef ...` and `cargohold mirror-config`: cluster definitions, readiness, edge-host files.

`register(main)` adds them to the `cargohold` group (a call rather than a
decorator on import, so it also works under ``python -m web.cli``). A thin
layer over `bundles.clusterdef`, `bundles.check` and `bundles.mirror`,
working on the data directory directly (the server may be running: SQLite
in WAL mode lets both work at once).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from web.cli import _config, data_dir_option, existing_data_dir_option


def _services(data_dir: Path | None) -> tuple[Any, Any, Any]:
    from bundles.clusterdef import ClusterDefinitions
    from web.app import build_services

    config = _config(data_dir=data_dir)
    services = build_services(config)
    return config, services, ClusterDefinitions(config.paths)


def _rules(config: Any) -> Any:
    from registry.names import parse_mapping_rules

    try:
        return parse_mapping_rules(config.mapping_rules)
    except ValueError as exc:
        raise click.UsageError(f"CARGOHOLD_MAPPING_RULES: {exc}") from None


@click.group()
def clusterdef() -> None:
    """Import cluster definitions and check them against the content on site."""


@clusterdef.command("import")
@data_dir_option
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--signature", "signature_file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              default=None, help="Detached signature over the whole file (raw, base64 or hex), from "
                                 "`cargohold clusterdef sign --detached` or `openssl dgst -sha256 -sign`.")
@click.option("--allow-unsigned", is_flag=True, default=False,
              help="Accept a definition no trusted key signs (the default policy refuses it).")
def import_cmd(data_dir: Path | None, file: Path, signature_file: Path | None, allow_unsigned: bool) -> None:
    """Verify and import a cluster definition .tgz (replaces an earlier one of the same name)."""
    from bundles.clusterdef import DefinitionError
    from bundles.clusterdef_trust import SignaturePolicy, SignatureRefused, import_archive
    from bundles.trust import TrustStore

    config, _, definitions = _services(data_dir)
    signature = None
    if signature_file is not None:
        with signature_file.open("rb") as f:
            signature = f.read(64 * 1024 + 1)  # read_signature_file refuses anything larger
    policy = SignaturePolicy(TrustStore(config.paths), allow_unsigned or config.allow_unsigned_definitions)
    try:
        d = import_archive(definitions, file, f"file:{file.name}", policy, signature)
    except SignatureRefused as exc:
        raise click.ClickException(f"{file}: refused ({exc.code}): {exc}") from None
    except DefinitionError as exc:
        raise click.ClickException(f"{file}: {exc}") from None
    click.echo(f"imported {d.name} {d.version}: {len(d.profiles)} profiles, "
               f"{sum(len(p.packs) for p in d.profiles)} packs, {len(d.images)} images; "
               + (f"signed by {d.signed_by}" if d.signed_by else "UNSIGNED (allowed by policy)"))
    for w in d.warnings:
        click.echo(f"warning: {w}", err=True)


@clusterdef.command("sign")
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--sign-key", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True,
              help="PEM private key to sign with (its public half must be trusted on site).")
@click.option("--passphrase-file", type=click.Path(path_type=Path), default=None,
              help="File holding the signing key's passphrase [or env CARGOHOLD_KEY_PASSPHRASE, or a prompt].")
@click.option("--detached", is_flag=True,
              help="Write a detached signature FILE.sig (RSA/ECDSA) instead of a signed copy of the archive.")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Where to write [default: NAME.signed.tgz beside FILE; with --detached, FILE.sig].")
def sign_cmd(file: Path, sign_key: Path, passphrase_file: Path | None, detached: bool, output: Path | None) -> None:
    """Sign the cluster definition FILE so a site accepts it; prints the signing key's id."""
    from bundles import keys as keymod
    from bundles.clusterdef import DefinitionError
    from bundles.clusterdef_trust import detached_signature, signed_archive
    from web.cli_build import _load_sign_key

    key = _load_sign_key(sign_key, passphrase_file)
    try:
        if detached:
            data = detached_signature(file, key)
            target = output or file.with_name(file.name + ".sig")
        else:
            with file.open("rb") as f:
                data = signed_archive(f, key)
            stem = file.name[:-4] if file.name.endswith(".tgz") else file.name
            target = output or file.with_name(f"{stem}.signed.tgz")
    except (DefinitionError, keymod.SignatureError) as exc:
        raise click.ClickException(f"{file}: {exc}") from None
    except OSError as exc:
        raise click.ClickException(f"cannot read {file}: {exc.strerror}") from None
    try:
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
    except OSError as exc:
        raise click.ClickException(f"cannot write {target}: {exc.strerror}") from None
    click.echo(f"wrote {target}", err=True)
    click.echo(keymod.key_id(key))


@clusterdef.command("list")
@existing_data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_cmd(data_dir: Path | None, as_json: bool) -> None:
    """List imported cluster definitions."""
    _, _, definitions = _services(data_dir)
    summaries = [d.summary() for d in definitions.all()]
    if as_json:
        click.echo(json.dumps({"definitions": summaries}, indent=2))
        return
    rows = [(s["name"], s["version"] or "-", ",".join(s["architectures"]), str(len(s["profiles"])), str(s["images"]),
             s["source"]) for s in summaries]
    _table(("NAME", "VERSION", "ARCH", "PROFILES", "IMAGES", "SOURCE"), rows)


@clusterdef.command("check")
@existing_data_dir_option
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
def check_cmd(data_dir: Path | None, name: str, as_json: bool) -> None:
    """Check NAME against the registry's content; exit status 1 when it is not ready."""
    from bundles.check import run_check
    from bundles.clusterdef import DefinitionNotFound

    config, services, definitions = _services(data_dir)
    try:
        result = run_check(definitions, services.registry, name, config.project, _rules(config))
    except DefinitionNotFound as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        _table(("IMAGE", "FINDING", "PLATFORMS", "DETAIL"),
               [(f["reference"], f["finding"], ",".join(f.get("platforms") or []) or "-", f["detail"])
                for f in result["findings"]])
        counts = ", ".join(f"{k} {v}" for k, v in result["counts"].items() if v)
        b = result["bytes"]
        click.echo(f"\n{name}: {'READY' if result['ready'] else 'NOT READY'} ({result['images']} images: {counts}; "
                   f"{b['required']} bytes required, {b['missing']} missing"
                   + (f", {b['imagesOfUnknownSize']} images of unknown size" if b["imagesOfUnknownSize"] else "")
                   + ")")
        for v in result["requiredVariables"]:
            click.echo(f"required variable without default: {v['profile']}/{v['name']}"
                       + (f" ({v['format']})" if v.get("format") else ""))
        for w in result["warnings"]:
            click.echo(f"warning: {w}", err=True)
    if not result["ready"]:
        raise SystemExit(1)


@clusterdef.command("history")
@existing_data_dir_option
@click.argument("name")
def history_cmd(data_dir: Path | None, name: str) -> None:
    """Past checks of NAME, newest first."""
    import time

    _, _, definitions = _services(data_dir)
    _table(("ID", "CHECKED (UTC)", "VERDICT", "COUNTS"),
           [(str(c["id"]), time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(c["checkedAt"])),
             "ready" if c["ready"] else "not ready", ", ".join(f"{k} {v}" for k, v in c["counts"].items() if v))
            for c in definitions.checks(name)])


@click.command("mirror-config")
@existing_data_dir_option
@click.option("--out", "out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Directory to write the files into.")
@click.option("--address", required=True, help="host:port at which edge hosts reach the appliance.")
@click.option("--scheme", type=click.Choice(["auto", "http", "https"]), default="auto", show_default=True,
              help="auto: https with the appliance's own CA (<data>/tls/ca.crt); without one, refused: "
                   "say http (plain text) or https (your own certificate).")
@click.option("--username", default=None, help="Credentials to embed, for a private project.")
@click.option("--password", default=None, envvar="CARGOHOLD_MIRROR_PASSWORD",
              help="Password for --username (better: CARGOHOLD_MIRROR_PASSWORD).")
def mirror_config(data_dir: Path | None, out: Path, address: str, scheme: str, username: str | None,
                  password: str | None) -> None:
    """Write containerd hosts.toml (ns and override_path modes), k3s/RKE2 registries.yaml and the CA."""
    from bundles.mirror import for_registry, write_directory
    from web.cli import mirror_scheme

    config, services, _ = _services(data_dir)
    try:
        files = for_registry(services.registry, config.project, address, mirror_scheme(config.paths, scheme),
                             username, password)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    for path in write_directory(files, out):
        click.echo(str(path))


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    for row in (header, *rows):
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def register(group: click.Group) -> None:
    """Add `clusterdef` and `mirror-config` to the top-level group."""
    group.add_command(clusterdef)
    group.add_command(mirror_config)
