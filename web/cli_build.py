"""`cargohold bundle build`, `keys generate` and `inventory export`: the connected side."""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from web.cli import _config, bundle, existing_data_dir_option, inventory, keys

PASSPHRASE_ENV = "CARGOHOLD_KEY_PASSPHRASE"
CREDS_ENV = "CARGOHOLD_REGISTRY_CREDS"
# `bundle build` exit status when the bundle would not hold what its cluster definitions need (nothing written).
EXIT_INCOMPLETE = 3


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


class _ProgressLine:
    """Bytes, rate and time left on stderr: redrawn in place on a terminal, a line every 10 s otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.started: dict[str, float] = {}
        self.last = 0.0
        self.phase = ""

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        start = self.started.setdefault(phase, now)
        if phase != self.phase:
            self.end()
            self.phase = phase
        if now - self.last < (0.2 if self.tty else 10.0) and not (total and done >= total):
            return
        self.last = now
        rate = done / max(now - start, 1e-6)
        text = f"{'pulling' if phase == 'pull' else 'writing'} {_human(done)}"
        if total:
            left = (total - done) / rate if rate > 0 else 0
            text += (f" / {_human(total)} ({100 * done / total:.0f}%), {_human(rate)}/s, "
                     f"{int(left) // 60}:{int(left) % 60:02d} left")
        else:
            text += f", {_human(rate)}/s"
        click.echo(("\r\x1b[K" if self.tty else "") + text, err=True, nl=not self.tty)

    def end(self) -> None:
        if self.tty and self.phase:
            click.echo("", err=True)
        self.phase = ""


def _passphrase(file: Path | None, prompt: str | None, confirm: bool = False) -> bytes | None:
    """A key passphrase from a file, $CARGOHOLD_KEY_PASSPHRASE, or a prompt (never the command line)."""
    if file is not None:
        try:
            return file.read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise click.UsageError(f"cannot read passphrase file {file}: {exc.strerror}") from None
    if os.environ.get(PASSPHRASE_ENV):
        return os.environ[PASSPHRASE_ENV].encode()
    if prompt is not None:
        return str(click.prompt(prompt, hide_input=True, confirmation_prompt=confirm)).encode()
    return None


def _load_sign_key(path: Path, passphrase_file: Path | None):  # type: ignore[no-untyped-def]
    from bundles.keys import SignatureError, load_private

    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise click.UsageError(f"cannot read --sign-key {path}: {exc.strerror}") from None
    encrypted = b"ENCRYPTED" in pem
    passphrase = _passphrase(passphrase_file, "Passphrase for the signing key" if encrypted and sys.stdin.isatty()
                             else None) if encrypted else None
    if encrypted and passphrase is None:
        raise click.UsageError(f"--sign-key {path} is encrypted: give --passphrase-file or ${PASSPHRASE_ENV}")
    try:
        return load_private(pem, passphrase)
    except SignatureError as exc:
        raise click.UsageError(f"--sign-key {path} is unusable: {exc}") from None


@bundle.command("build")
@click.option("--name", required=True, help="Bundle name (e.g. the site or product).")
@click.option("--version", "version", required=True, help="Bundle version.")
@click.option("--layout", "layouts", multiple=True, metavar="DIR[:REF[=FULL],...]",
              help="OCI image layout: every tagged image, or the comma-separated refs after ':' "
                   "(REF=FULL records a bare tag or short name under a full reference). Repeatable.")
@click.option("--image", "images", multiple=True, metavar="REF[=RECORDED]",
              help="Image to pull from its registry (recorded as RECORDED if given). Repeatable.")
@click.option("--images-file", "images_files", multiple=True, type=click.Path(path_type=Path),
              help="File of image references, one per line; '#' starts a comment. Repeatable.")
@click.option("--registry-insecure", is_flag=True, help="Talk plain HTTP to registries (a local registry).")
@click.option("--registry-ca", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="PEM CA bundle to verify HTTPS registries with (e.g. a site's own CA).")
@click.option("--registry-creds", envvar=CREDS_ENV, default=None, metavar="USER:PASSWORD",
              help=f"Registry credentials [env {CREDS_ENV}]; else from the containers/docker auth file.")
@click.option("--authfile", type=click.Path(path_type=Path), default=None,
              help="containers auth.json / docker config.json with registry credentials.")
@click.option("--platform", "platforms", multiple=True, metavar="OS/ARCH[/VARIANT]",
              help="Keep only these platforms of multi-arch images (rewrites their index). Repeatable.")
@click.option("--no-referrers", is_flag=True,
              help="Leave images' signatures, SBOMs and attestations (OCI referrers, cosign tags) behind.")
@click.option("--chart", "charts", multiple=True, metavar="FILE.tgz|oci://REF",
              help="Helm chart: oci://REF is pulled; FILE.tgz travels as an OCI chart, served at "
                   "oci://<appliance>/<project>/<name>:<version>. Repeatable.")
@click.option("--file", "files", multiple=True, metavar="PATH[=NAME[:VERSION]]",
              help="A file of any size (ISO, disk image, binary, script), served at <project>/files/<name>:<version> "
                   "over OCI and HTTP; NAME defaults to the file's name, VERSION to latest. Repeatable.")
@click.option("--files-file", "files_files", multiple=True, type=click.Path(path_type=Path),
              help="File listing --file specs, one per line; '#' starts a comment. Repeatable.")
@click.option("--cluster-definition", "definitions", multiple=True, type=click.Path(path_type=Path),
              help="Cluster definition archive (.tgz): what it needs is resolved from the sources and the bundle "
                   "is checked against it before it is written. Repeatable.")
@click.option("--source-layout", "source_layouts", multiple=True, type=click.Path(path_type=Path), metavar="DIR",
              help="OCI layout to take what the cluster definitions need from (only that). Repeatable.")
@click.option("--from-registry", "from_registries", multiple=True, metavar="HOST[/PREFIX]|origin",
              help="Registry to pull what the cluster definitions need from: HOST/PREFIX/<original reference>, "
                   "or 'origin' for each image's own registry. Repeatable, tried in order.")
@click.option("--default-registry", default=None, metavar="HOST",
              help="Record a layout's short names (pause:3.9) under HOST (HOST/pause:3.9); without it they are "
                   "refused.")
@click.option("--allow-incomplete", is_flag=True,
              help="Write the bundle even if it lacks what its cluster definitions need; the findings are "
                   "recorded in the bundle and shown at import.")
@click.option("--missing-out", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help="Write what the cluster definitions need and the bundle lacks as an --images-file.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the outcome and the readiness findings as JSON on stdout.")
@click.option("--sign-key", type=click.Path(path_type=Path), default=None, help="PEM private key to sign with.")
@click.option("--passphrase-file", type=click.Path(path_type=Path), default=None,
              help=f"File holding the signing key's passphrase [or env {PASSPHRASE_ENV}, or a prompt].")
@click.option("--no-sign", is_flag=True, help="Write an unsigned bundle (sites refuse these by default).")
@click.option("--level", type=click.IntRange(1, 19), default=3, show_default=True,
              help="zstd compression level (1-19; the ultra levels would cost the site memory).")
@click.option("--threads", type=int, default=-1, show_default=True,
              help="zstd worker threads (0: none, -1: one per CPU).")
@click.option("--split", default=None, metavar="SIZE",
              help="Write OUT.part000, OUT.part001 ... of at most SIZE bytes each (e.g. 3900M, 3G).")
@click.option("--no-frame-index", is_flag=True,
              help="Write one zstd frame and no frame index (as older builders did; sites then verify "
                   "the bundle in one thread).")
@click.option("--base", type=click.Path(path_type=Path), default=None,
              help="Earlier bundle or `inventory export` file: write a delta bundle without what it holds.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Output file (.tar.zst).")
def build_cmd(name: str, version: str, layouts: tuple[str, ...], images: tuple[str, ...],
              images_files: tuple[Path, ...], registry_insecure: bool, registry_ca: Path | None,
              registry_creds: str | None,
              authfile: Path | None, platforms: tuple[str, ...], no_referrers: bool, charts: tuple[str, ...],
              files: tuple[str, ...], files_files: tuple[Path, ...],
              definitions: tuple[Path, ...], source_layouts: tuple[Path, ...], from_registries: tuple[str, ...],
              default_registry: str | None, allow_incomplete: bool, missing_out: Path | None, as_json: bool,
              sign_key: Path | None, passphrase_file: Path | None, no_sign: bool,
              level: int, threads: int, split: str | None, no_frame_index: bool, base: Path | None,
              output: Path) -> None:
    """Build a signed content bundle from layouts, registries, charts, files and cluster definitions.

    With --cluster-definition, what the definitions need is taken from the
    sources, and the bundle is checked as a site would check it before
    anything is written. Exit status: 0 written (complete, or incomplete with
    --allow-incomplete), 3 refused because it is incomplete (nothing written),
    1 any other failure, 2 a usage error.
    """
    from bundles.build import BuildError, BundleBuilder, Platform, parse_size
    from bundles.buildsources import RegistrySource
    from bundles.frames import FRAME_TARGET
    from bundles.registry_client import Credentials, PullError, RegistryClient, auth_file_credentials

    if (source_layouts or from_registries) and not definitions:
        raise click.UsageError("--source-layout and --from-registry resolve what --cluster-definition needs: "
                               "give a cluster definition, or name images with --layout/--image")

    if sign_key is None and not no_sign:
        raise click.UsageError("give --sign-key PEM, or --no-sign to write an unsigned bundle")
    if sign_key is not None and no_sign:
        raise click.UsageError("--sign-key and --no-sign contradict each other")
    key = _load_sign_key(sign_key, passphrase_file) if sign_key is not None else None
    if key is None:
        click.echo("warning: writing an UNSIGNED bundle; sites refuse unsigned bundles unless their policy "
                   "allows them", err=True)
    credentials: Credentials
    try:
        split_size = parse_size(split) if split else None
        filters = [Platform.parse(p) for p in platforms]
        registry_sources = [RegistrySource.parse(r) for r in from_registries]
        if default_registry is not None and (not default_registry.strip() or "/" in default_registry.strip("/")
                                             or "://" in default_registry):
            raise click.UsageError(f"--default-registry {default_registry!r}: expected a registry HOST[:PORT]")
        if registry_creds:
            user, sep, password = registry_creds.partition(":")
            if not sep:
                raise click.UsageError("--registry-creds must be USER:PASSWORD")
            creds = (user, password)

            def fixed(host: str) -> tuple[str, str] | None:
                return creds

            credentials = fixed
        else:
            credentials = auth_file_credentials(authfile)
    except (BuildError, PullError) as exc:
        raise click.UsageError(str(exc)) from None
    output = output.absolute()
    if not output.parent.is_dir():
        raise click.UsageError(f"output directory {output.parent} does not exist")
    created = None
    if os.environ.get("SOURCE_DATE_EPOCH"):  # reproducible builds: same content and key, same bytes
        try:
            created = datetime.fromtimestamp(int(os.environ["SOURCE_DATE_EPOCH"]), UTC)
        except ValueError:
            raise click.UsageError("SOURCE_DATE_EPOCH must be an integer (seconds since 1970)") from None
    progress = _ProgressLine()
    client = RegistryClient(insecure=registry_insecure, credentials=credentials, ca_file=registry_ca)
    try:
        with BundleBuilder(name, version, platforms=filters, client=client, work_dir=output.parent,
                           progress=progress, created=created, default_registry=default_registry,
                           referrers=not no_referrers) as builder:
            for spec in layouts:
                directory, sep, refs = spec.partition(":")
                builder.add_layout(Path(directory), [r for r in refs.split(",") if r] if sep else [])
            for image in images:
                builder.add_image(image)
            for images_file in images_files:
                builder.add_images_file(images_file)
            for chart in charts:
                builder.add_chart(chart)
            for spec in _file_specs(files, files_files):
                builder.add_file(spec)
            for definition in definitions:
                builder.add_cluster_definition(definition)
            if base is not None:
                b = builder.set_base(base)
                click.echo(f"delta over {b['name']} {b['version']}", err=True)
            incomplete = _check_definitions(builder, source_layouts, registry_sources, allow_incomplete,
                                            missing_out, as_json, progress)
            result = builder.write(output, key, level=level, threads=threads, split=split_size,
                                   incomplete=incomplete, frame_size=None if no_frame_index else FRAME_TARGET)
            progress.end()
            for skipped in builder.skipped_referrers:
                click.echo(f"warning: {skipped}: --platform rewrote its index, so signatures and other referrers "
                           "of the upstream index do not apply to it and were left behind", err=True)
    except BuildError as exc:
        progress.end()
        raise click.ClickException(str(exc)) from None
    m = result.manifest
    if as_json:
        click.echo(json.dumps({"written": True, "files": [str(f) for f in result.files], "sha256": result.sha256,
                               "complete": m.incomplete is None,
                               "findings": (m.incomplete or {}).get("findings", [])}, indent=2))
    else:
        for f in result.files:
            click.echo(str(f))
    click.echo(f"{m.name} {m.version}: {len(m.images)} images, {len(m.charts) + len(m.chart_artifacts)} charts, "
               f"{len(m.files)} files, "
               f"{len(m.cluster_definitions)} cluster definitions, {len(m.members)} members, "
               f"{_human(m.total_size)} -> {_human(result.compressed_size)} in {len(result.files)} file(s)"
               + (f", {len(m.external_blobs)} blobs left to the base" if m.base else "")
               + (f", {sum(len(i.referrers) for i in m.images)} referrers" if not no_referrers else ""), err=True)
    click.echo(f"sha256 {result.sha256}" + (f"; signed by {result.key_id}" if result.key_id else "; UNSIGNED"),
               err=True)


def _check_definitions(builder: Any, source_layouts: tuple[Path, ...], registries: list[Any],
                       allow_incomplete: bool, missing_out: Path | None, as_json: bool,
                       progress: _ProgressLine) -> dict[str, Any] | None:
    """Resolve the definitions' needs, check the planned bundle; the manifest's `incomplete` record or None.

    Exits with EXIT_INCOMPLETE (before anything is written) when the bundle
    lacks something and --allow-incomplete was not given.
    """
    from bundles.buildcheck import check_build, findings_table, missing_images_text
    from bundles.buildsources import resolve

    if not builder.definitions:
        if missing_out is not None:
            _write_text(missing_out, missing_images_text([]))
        return None
    resolution = resolve(builder, source_layouts, registries)
    progress.end()
    for warning in resolution.warnings:
        click.echo(f"warning: {warning}", err=True)
    for reference, source in resolution.added:
        click.echo(f"needed by a cluster definition: {reference} (from {source})", err=True)
    check = check_build(builder)
    if missing_out is not None:
        _write_text(missing_out, missing_images_text(check.findings))
    if check.complete:
        click.echo(f"readiness: the bundle holds everything its {len(check.results)} cluster definition(s) need",
                   err=True)
        return None
    for line in findings_table(check.findings):
        click.echo(line, err=True)
    verdict = (f"readiness: {len(check.findings)} thing(s) the cluster definitions need are not in the bundle "
               "as needed")
    if allow_incomplete:
        click.echo(f"warning: {verdict}; writing it anyway (--allow-incomplete): the findings are recorded "
                   "in the bundle and shown when it is imported", err=True)
        return check.record()
    if as_json:
        click.echo(json.dumps({"written": False, **check.to_json()}, indent=2))
    click.echo(f"error: {verdict}; nothing was written. Add the missing content"
               + (f" (listed in {missing_out}, an --images-file)" if missing_out else " (--missing-out FILE lists it)")
               + ", or give --allow-incomplete to ship it anyway.", err=True)
    raise SystemExit(EXIT_INCOMPLETE)


def _write_text(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror}") from None


def _file_specs(files: tuple[str, ...], lists: tuple[Path, ...]) -> list[str]:
    """--file specs, then those of each --files-file (one per line, '#' comments)."""
    specs = list(files)
    for path in lists:
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise click.UsageError(f"cannot read --files-file {path}: {exc.strerror}") from None
        specs += [text for line in lines if (text := line.split("#", 1)[0].strip())]
    return specs


@keys.command("generate")
@click.argument("prefix", type=click.Path(path_type=Path))
@click.option("--type", "kind", type=click.Choice(["rsa", "ecdsa-p256", "ecdsa-p384", "ed25519"]), default="rsa",
              show_default=True, help="Key type.")
@click.option("--bits", type=int, default=3072, show_default=True, help="RSA key size (at least 2048).")
@click.option("--encrypt", is_flag=True, help="Protect the private key with a passphrase (prompted, or "
                                             f"--passphrase-file / ${PASSPHRASE_ENV}).")
@click.option("--passphrase-file", type=click.Path(path_type=Path), default=None,
              help="File holding the passphrase (implies --encrypt).")
@click.option("--force", is_flag=True, help="Overwrite existing key files.")
def generate_cmd(prefix: Path, kind: str, bits: int, encrypt: bool, passphrase_file: Path | None,
                 force: bool) -> None:
    """Write a new signing key: PREFIX.pem (private, mode 0600) and PREFIX.pub.pem; print its key id."""
    from bundles import keys as keymod

    private_path = prefix.with_name(prefix.name + ".pem")
    public_path = prefix.with_name(prefix.name + ".pub.pem")
    for path in (private_path, public_path):
        if path.exists() and not force:
            raise click.ClickException(f"{path} exists; use --force to overwrite it")
    passphrase = None
    if encrypt or passphrase_file is not None:
        passphrase = _passphrase(passphrase_file, "Passphrase for the new key", confirm=True)
        if not passphrase:
            raise click.UsageError("the passphrase is empty")
    try:
        key = keymod.generate(kind, bits)
    except keymod.SignatureError as exc:
        raise click.UsageError(str(exc)) from None
    tmp = private_path.with_name(private_path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(keymod.private_pem(key, passphrase))
        os.chmod(tmp, 0o600)  # O_CREAT's mode does not apply to a file that already existed
        os.replace(tmp, private_path)
        public_path.write_bytes(keymod.public_pem(key))
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise click.ClickException(f"cannot write the key files: {exc}") from None
    click.echo(f"private key: {private_path} (keep it secret)\npublic key:  {public_path}", err=True)
    click.echo(keymod.key_id(key))


@inventory.command("export")
@existing_data_dir_option
@click.option("--name", default=None, help="Site name recorded in the inventory [default: host name].")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Output JSON file ('-' for stdout).")
def export_cmd(data_dir: Path | None, name: str | None, output: Path) -> None:
    """Write every blob digest and size this appliance holds (for `bundle build --base`)."""
    from bundles.inventory import InventoryError, export_inventory, write_inventory

    paths = _config(data_dir=data_dir).paths
    try:
        if str(output) == "-":
            count = write_inventory(paths, sys.stdout, name)
        else:
            count = export_inventory(paths, output, name)
    except InventoryError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{count} blobs listed", err=True)
