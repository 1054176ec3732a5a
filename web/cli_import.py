"""`cargohold bundle import`, `bundle list/status` and the trusted-key commands: the site side.

A thin layer over `bundles.importer` (through `web.bundle_import`), the same
core the HTTP API runs. Progress goes to stderr, the report to stdout, and a
refused bundle exits 1 with the reason and its refusal code
(``Error: bundle refused: <reason> [<CODE>]``), also when the database is
too full to record the job (``DISK_FULL``): never with a traceback.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import click

from registry.dbengine import Error as DatabaseError
from web.cli import _config, audit_local, bundle, data_dir_option, existing_data_dir_option, keys


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class StderrProgress:
    """A progress line on stderr: redrawn in place on a terminal, a new line each time otherwise."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._last = 0.0
        self._drawn = False

    def _draw(self, line: str, width: int) -> None:
        if self.tty:
            self.stream.write("\r" + line.ljust(width))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()


class ProgressBar(StderrProgress):
    """Bytes, rate and time left on stderr: redrawn in place on a terminal, a line every few seconds otherwise."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self.started = time.monotonic()
        self._state = ""

    def __call__(self, state: str, done: int, total: int) -> None:
        now = time.monotonic()
        if state == self._state and now - self._last < (0.2 if self.tty else 2.0) and done < total:
            return
        self._last, self._state = now, state
        elapsed = max(now - self.started, 1e-6)
        rate = done / elapsed
        left = (total - done) / rate if rate > 0 else 0.0
        pct = 100.0 * done / total if total else 100.0
        width = 30
        filled = int(width * pct / 100)
        self._draw(f"{state:<9} [{'#' * filled}{'.' * (width - filled)}] {pct:5.1f}%  {_size(done)} / {_size(total)}"
                   f"  {_size(rate)}/s  {_duration(left)} left", 100)


def _refused(code: str, message: str) -> click.ClickException:
    """The one line a refused import ends with: the reason, then the refusal code."""
    return click.ClickException(f"bundle refused: {message} [{code}]")


def _print_report(report: dict[str, Any]) -> None:
    b = report["bundle"]
    title = f"{b['name']} {b['version']}" if b.get("format") == "cargohold" else "plain OCI layout bundle"
    click.echo(f"imported {title} from {report['source']} (job {report.get('jobId', '-')})")
    if report["signatures"]:
        for s in report["signatures"]:
            click.echo(f"  verified: {s['kind']} signature by key {s['keyId']}")
    else:
        click.echo("  UNSIGNED: imported because unsigned bundles are allowed")
    incomplete = b.get("incomplete")
    if incomplete is not None:
        findings = incomplete.get("findings") or []
        click.echo(f"  INCOMPLETE: built with --allow-incomplete; {len(findings)} thing(s) its cluster "
                   "definitions need were not in it:")
        for f in findings:
            click.echo(f"    {f.get('definition', '?')}: {f.get('kind', '?')} {f.get('reference', '?')} "
                       f"{f.get('code', '?')}" + (f" ({f['detail']})" if f.get("detail") else ""))
    for image in report["images"]:
        click.echo(f"  {image['reference']} -> {image['repository']}"
                   f"{':' + image['tag'] if image['tag'] else ''}@{image['digest']}")
    for chart in report["charts"]:
        click.echo(f"  chart {chart['name']} {chart.get('version') or ''} {chart['digest']}")
    for name in report["clusterDefinitions"]:
        click.echo(f"  cluster definition {name}")
    click.echo(f"  blobs: {report['blobs']['new']} new, {report['blobs']['reused']} already present; "
               f"{_size(report['bytesWritten'])} written in {report['durationSeconds']:.1f} s")
    release = report.get("release")
    if release:
        click.echo(f"  release {release['id']} staged" + (
            f"; {len(release['pendingTags'])} tag(s) move only when it is promoted "
            f"(`cargohold release promote {release['id']}`): {', '.join(release['pendingTags'])}"
            if release["pendingTags"] else ""))


@bundle.command("import")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--signature", "signature_file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              default=None, help="Detached signature over the whole file (raw, base64 or hex), "
                                 "e.g. from `openssl dgst -sha256 -sign`.")
@data_dir_option
@click.option("--allow-unsigned", is_flag=True, default=False,
              help="Accept a bundle no trusted key vouches for (the default policy refuses it).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def import_bundle(file: Path, signature_file: Path | None, data_dir: Path | None, allow_unsigned: bool,
                  as_json: bool, quiet: bool) -> None:
    """Verify and import the bundle FILE (or FILE.part000, FILE.part001, ...)."""
    from bundles.importer import BundleRefused, bundle_parts
    from bundles.jobs import disk_full_refusal, run_import
    from registry.db import is_disk_full
    from web.bundle_import import import_services

    def full(exc: Exception) -> click.ClickException:
        if not is_disk_full(exc):
            raise exc
        refusal = disk_full_refusal(exc)
        return _refused(refusal.code, refusal.message + " (no import job could be recorded)")

    config = _config(data_dir=data_dir)
    try:
        services = import_services(config)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    except DatabaseError as exc:  # a migration could not be written
        raise full(exc) from None
    signature = None
    if signature_file is not None:
        with signature_file.open("rb") as f:
            signature = f.read(64 * 1024 + 1)  # read_signature_file refuses anything larger
    try:
        total = sum(p.stat().st_size for p in bundle_parts(file))
    except BundleRefused as exc:
        raise _refused(exc.code, exc.message) from None
    try:
        job = services.jobs.create(str(file), total)
    except DatabaseError as exc:
        raise full(exc) from None
    bar = None if quiet else ProgressBar()
    click.echo(f"import job {job.id}", err=True)
    try:
        report = run_import(services.importer, services.jobs, job.id, file, signature,
                            allow_unsigned=True if allow_unsigned else None, progress=bar)
    except BundleRefused as exc:
        if bar is not None:
            bar.close()
        raise _refused(exc.code, exc.message.encode("utf-8", "backslashreplace").decode()) from None
    if bar is not None:
        bar.close()
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _print_report(report)


def _job_line(job: Any) -> str:
    pct = f"{100.0 * job.bytes_done / job.bytes_total:5.1f}%" if job.bytes_total else "    -"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.created_at))
    line = f"{job.id}  {when}  {job.state:<9} {pct}  {job.source}"
    incomplete = ((job.report or {}).get("bundle") or {}).get("incomplete")
    if incomplete is not None:
        line += f"  INCOMPLETE ({len(incomplete.get('findings') or [])} finding(s))"
    if job.error:
        line += f"\n    {job.error}" + (f" [{job.error_code}]" if job.error_code else "")
    return line


@bundle.command("list")
@existing_data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--limit", type=int, default=50, show_default=True)
def list_imports(data_dir: Path | None, as_json: bool, limit: int) -> None:
    """Recent bundle imports, newest first."""
    from bundles.jobs import ImportJobs

    jobs = ImportJobs(_config(data_dir=data_dir).paths).list(limit)
    if as_json:
        click.echo(json.dumps([j.to_json() for j in jobs], indent=2))
        return
    for job in jobs:
        click.echo(_job_line(job))


@bundle.command("status")
@click.argument("job_id")
@existing_data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def import_status(job_id: str, data_dir: Path | None, as_json: bool) -> None:
    """State, progress and report of one import job."""
    from bundles.jobs import ImportJobs

    jobs = ImportJobs(_config(data_dir=data_dir).paths)
    job = jobs.get(job_id)
    if job is None:
        matches = [j for j in jobs.list(10_000) if j.id.startswith(job_id)]
        if len(matches) != 1:
            raise click.ClickException(f"no import job {job_id}" if not matches
                                       else f"job id {job_id} is ambiguous")
        job = matches[0]
    if as_json:
        click.echo(json.dumps(job.to_json(), indent=2))
        return
    click.echo(_job_line(job))
    if job.report:
        _print_report(job.report)


@keys.command("add")
@click.argument("pem", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--description", "-d", default="", help="Whose key this is (shown by `keys list`).")
@data_dir_option
def add_key(pem: Path, description: str, data_dir: Path | None) -> None:
    """Trust the PEM public key PEM for bundle signatures."""
    from bundles.trust import TrustError, TrustStore

    with pem.open("rb") as f:
        data = f.read(1 << 20)
    paths = _config(data_dir=data_dir).paths
    try:
        entry = TrustStore(paths).add(data, description)
    except TrustError as exc:
        raise click.ClickException(str(exc)) from None
    audit_local(paths, "create", "trusted_key", entry.id)
    click.echo(f"trusted {entry.key_type} key {entry.id}" + (f" ({entry.description})" if entry.description else ""))


@keys.command("list")
@existing_data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with the PEM public keys).")
def list_keys(data_dir: Path | None, as_json: bool) -> None:
    """The keys this appliance accepts bundle signatures from."""
    from bundles.trust import TrustStore

    entries = TrustStore(_config(data_dir=data_dir).paths).list()
    if as_json:
        click.echo(json.dumps([e.to_json() for e in entries], indent=2))
        return
    if not entries:
        click.echo("no trusted keys: add one with `cargohold keys add PEM --description ...`", err=True)
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.added_at))
        click.echo(f"{e.id}  {e.key_type:<11} {when}  {e.description}")


@keys.command("remove")
@click.argument("key_id")
@existing_data_dir_option
def remove_key(key_id: str, data_dir: Path | None) -> None:
    """Stop trusting the key KEY_ID (its full id or a unique prefix)."""
    from bundles.trust import TrustError, TrustStore

    paths = _config(data_dir=data_dir).paths
    try:
        entry = TrustStore(paths).remove(key_id)
    except TrustError as exc:
        raise click.ClickException(str(exc)) from None
    audit_local(paths, "delete", "trusted_key", entry.id)
    click.echo(f"removed key {entry.id}" + (f" ({entry.description})" if entry.description else ""))
