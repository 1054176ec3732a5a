"""`cargohold follow URL`: keep this appliance in step with a primary appliance's releases (`bundles.follow`).

`register(main)` adds the command to the `cargohold` group. It runs beside
`cargohold serve` on the follower's data directory (SQLite in WAL mode), a
round every ``--interval``, or one round with ``--once``. The robot's secret
comes from ``--secret-file`` or ``$CARGOHOLD_FOLLOW_SECRET``, never from the
command line, and is never printed. Progress goes to standard error, one
line per release copied and per event applied; ``--once`` exits 0 when this
appliance is in sync with the primary, 1 with the reason otherwise. While the
primary refuses the robot's credentials, rounds are ten intervals (at least
five minutes) apart, so the follower does not lock the robot out.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from web.cli import _config, existing_data_dir_option

SECRET_ENV = "CARGOHOLD_FOLLOW_SECRET"
CREDENTIALS_PAUSE = 300.0  # seconds between rounds while the primary refuses the robot's credentials (at least)


def _secret(secret_file: Path | None) -> str:
    if secret_file is not None:
        try:
            text = sys.stdin.read() if str(secret_file) == "-" else secret_file.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise click.UsageError(f"cannot read --secret-file {secret_file}: "
                                   f"{getattr(exc, 'strerror', None) or exc}") from None
        secret = text.strip()
        if not secret:
            raise click.UsageError(f"--secret-file {secret_file} is empty")
        return secret
    if os.environ.get(SECRET_ENV):
        return os.environ[SECRET_ENV].strip()
    raise click.UsageError(f"no robot secret given: pass --secret-file FILE ('-' for standard input) or set "
                           f"${SECRET_ENV}")


def _say(line: str) -> None:
    click.echo(line, err=True)


def register(main: click.Group) -> None:
    main.add_command(follow)


@click.command()
@existing_data_dir_option
@click.argument("primary_url", metavar="URL")
@click.option("--robot", required=True, help="The primary's robot account (e.g. robot$spectro-images+follower).")
@click.option("--secret-file", type=click.Path(path_type=Path, dir_okay=False, allow_dash=True), default=None,
              help=f"File holding the robot's secret ('-': standard input). Without it: ${SECRET_ENV}.")
@click.option("--ca", "ca_file", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="CA certificate (PEM) the primary's HTTPS certificate is issued by [default: the system's].")
@click.option("--interval", default="30s", show_default=True, help="Time between rounds (90, 30s, 5m, 1h).")
@click.option("--once", is_flag=True, help="One round; exit 0 when in sync, 1 with the reason otherwise.")
@click.option("--new-primary", is_flag=True,
              help="Follow URL although this appliance followed another primary: start from its first event.")
@click.option("--json", "as_json", is_flag=True, help="With --once: print the round's report as JSON.")
def follow(data_dir: Path | None, primary_url: str, robot: str, secret_file: Path | None, ca_file: Path | None,
           interval: str, once: bool, new_primary: bool, as_json: bool) -> None:
    """Keep this appliance in sync with the promoted releases of the primary appliance at URL.

    Each round copies the primary's releases that are not here (images
    through the registry API, verified against their digests; definitions
    and files), stages them as an import would, then applies the primary's
    promotions, rollbacks and discards in its order. See docs/operations.md,
    "Follower appliance and failover".
    """
    from bundles.follow import Follower
    from bundles.follow_primary import FollowError, Primary
    from bundles.releases import Releases
    from registry.gc import parse_grace
    from registry.names import parse_mapping_rules
    from web.app import build_services

    try:
        seconds = parse_grace(interval)
    except ValueError:
        raise click.UsageError(f"--interval {interval!r} is not a duration like 90, 30s, 5m or 1h") from None
    if seconds < 1:
        raise click.UsageError("--interval must be at least 1 second")
    try:
        primary = Primary(primary_url.rstrip("/"), robot, _secret(secret_file), ca_file)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    config = _config(data_dir=data_dir)
    services = build_services(config)
    try:
        rules = parse_mapping_rules(config.mapping_rules)
    except ValueError as exc:
        raise click.UsageError(f"CARGOHOLD_MAPPING_RULES: {exc}") from None
    follower = Follower(Releases(services.registry, config.project, rules, services.audit), primary, _say, seconds,
                        config.import_reserve_bytes)
    first = True
    while True:
        pause = seconds
        try:
            report = follower.sync(new_primary=new_primary and first)
        except FollowError as exc:
            if once:
                raise click.ClickException(str(exc)) from None
            if exc.credentials:
                # Each refused try counts toward the primary's login limits: do not lock the robot (or this
                # host's address) out by retrying at the usual pace.
                pause = max(seconds * 10, CREDENTIALS_PAUSE)
                _say(f"Error: {exc}; trying again in {pause:.0f} s")
            else:
                _say(f"Error: {exc}")
        else:
            if report.in_sync:
                _say(f"in sync with {primary.base}: event {report.last_seq}, {len(report.copied)} release(s) "
                     f"copied, {len(report.applied)} event(s) applied")
            else:
                for problem in report.problems:
                    _say(f"Warning: diverged from the primary: {problem}")
            if once:
                if as_json:
                    click.echo(json.dumps(report.to_json(), indent=2))
                if not report.in_sync:
                    raise click.ClickException(f"not in sync with {primary.base}: {'; '.join(report.problems)}")
                return
        first = False
        time.sleep(pause)
