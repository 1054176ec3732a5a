"""`cargohold seed scan` and `seed status`: the seed directory from the command line (`bundles.seed`).

The scan runs in this process, through the same core the server's start-up
scan and `POST /api/v1/seed/scan` use, and may run while `cargohold serve`
serves the data directory: a scan already running (the server's) is waited
for first, and each file set is claimed before it is imported, so nothing
is imported twice. The report goes to stdout (``--json`` for JSON); the exit
status is 1 when any bundle or definition was refused.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from web.cli import _config, data_dir_option, existing_data_dir_option

POLL_SECONDS = 1.0


@click.group()
def seed() -> None:
    """The seed directory: bundles and definitions imported with no command (docs/bundle-import.md)."""


def _print_report(report: dict[str, Any]) -> None:
    click.echo(f"seed directory {report['seedDir']}" + ("" if report["exists"] else " (does not exist)"))
    if report["trustedKeys"] == 0:
        click.echo("  no trusted key: every signed bundle and definition is refused until one is added "
                   "(`cargohold keys add`)")
    if not report["files"]:
        click.echo("  nothing to import")
    for f in report["files"]:
        extra = f" ({f['parts']} parts)" if f["parts"] > 1 else ""
        extra += f" + {f['signature']}" if f["signature"] else ""
        line = f"  {f['outcome']:<15} {f['kind']:<10} {f['name']}{extra}"
        if f.get("result"):
            line += f": {f['result']}"
        if f.get("jobId"):
            line += f" (job {f['jobId']})"
        if f.get("retried"):
            line += f" [retried: was {f['retried']}]"
        click.echo(line)
        if f.get("errorCode") or f.get("error"):
            click.echo(f"      {f.get('error') or ''} [{f.get('errorCode') or '-'}]")


@seed.command("scan")
@data_dir_option
@click.option("--seed-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="The directory to scan [default: CARGOHOLD_SEED_DIR, else <data>/seed].")
@click.option("--retry-refused", is_flag=True,
              help="Try again what an earlier scan refused (e.g. after trusting its signing key).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def scan(data_dir: Path | None, seed_dir: Path | None, retry_refused: bool, as_json: bool) -> None:
    """Import what is new in the seed directory, wait for it, and print the report."""
    from bundles.seed import SeedDirError
    from web.seed import seed_scanner

    config = _config(data_dir=data_dir, seed_dir=seed_dir)
    try:
        scanner = seed_scanner(config)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    while True:
        claimed = scanner.claim_scan("cli", "cli")
        assert claimed is not None  # only a start-up scan is ever turned away
        scan_id, mine = claimed
        if mine:
            break
        click.echo(f"waiting for seed scan {scan_id}, running in another process, to finish", err=True)
        while (running := scanner.get_scan(scan_id)) is not None and running.state == "running":
            time.sleep(POLL_SECONDS)
    click.echo(f"seed scan {scan_id} of {scanner.seed_dir}", err=True)
    try:
        report = scanner.run_scan(scan_id, "cli", retry_refused)
    except SeedDirError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps({"scan": scan_id, **report}, indent=2))
    else:
        _print_report(report)
    if report["counts"].get("refused"):
        raise SystemExit(1)


@seed.command("status")
@existing_data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(data_dir: Path | None, as_json: bool) -> None:
    """What every seed file set became, and the latest scan's report."""
    from web.seed import seed_scanner

    scanner = seed_scanner(_config(data_dir=data_dir))
    latest = scanner.latest_scan()
    files = scanner.files()
    if as_json:
        click.echo(json.dumps({"seedDir": str(scanner.seed_dir), "latestScan": latest.to_json() if latest else None,
                               "files": [f.to_json() for f in files]}, indent=2))
        return
    click.echo(f"seed directory {scanner.seed_dir}")
    for f in files:
        line = f"  {f.state:<11} {f.kind:<10} {f.path}"
        if f.job_id:
            line += f" (job {f.job_id})"
        if f.error_code:
            line += f" [{f.error_code}] {f.error or ''}"
        click.echo(line)
    if latest is not None:
        click.echo(f"latest scan {latest.id} ({latest.trigger}, {latest.state})")


def register(group: click.Group) -> None:
    """Add `seed` to the top-level group."""
    group.add_command(seed)
