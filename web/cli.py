"""The `cargohold` command line: a thin layer over the core the API uses."""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from web.config import FRONTS, Config


def _config(**overrides: Any) -> Config:
    try:
        return Config.from_env(**overrides)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


@click.group()
@click.version_option(package_name="cargohold")
def main() -> None:
    """cargohold: signed content bundles into an on-site OCI registry."""


data_dir_option = click.option("--data-dir", type=click.Path(path_type=Path), default=None,
                               help="Data directory [default: ./cargohold-data, or CARGOHOLD_DATA_DIR].")


@main.command()
@data_dir_option
@click.option("--bind", default=None, help="Address to listen on [default: 127.0.0.1:5000].")
@click.option("--workers", type=int, default=None, help="gunicorn worker processes [default: 2].")
@click.option("--worker-class", default=None, help="gunicorn worker class [default: gthread].")
@click.option("--threads", type=int, default=None, help="Threads per gthread worker [default: 32].")
@click.option("--project", default=None, help="Harbor project for bundle images [default: spectro-images].")
@click.option("--tls/--no-tls", default=None, help="Serve HTTPS (generates a local CA and certificate if none given).")
@click.option("--tls-cert", type=click.Path(path_type=Path), default=None, help="PEM certificate chain for --tls.")
@click.option("--tls-key", type=click.Path(path_type=Path), default=None, help="PEM private key for --tls.")
@click.option("--tls-san", default=None,
              help="Extra comma-separated DNS names/IPs for the generated certificate (e.g. the cluster VIP).")
@click.option("--front", type=click.Choice(FRONTS), default=None,
              help="nginx: Debian's nginx in front of gunicorn [default]; none: gunicorn alone (development only).")
def serve(data_dir: Path | None, bind: str | None, workers: int | None, worker_class: str | None,
          threads: int | None, project: str | None, tls: bool | None, tls_cert: Path | None,
          tls_key: Path | None, tls_san: str | None, front: str | None) -> None:
    """Run the appliance: the nginx front and the app under gunicorn."""
    from web.front import FrontError
    from web.server import ApplianceServer

    config = _config(data_dir=data_dir, bind=bind, workers=workers, worker_class=worker_class, threads=threads,
                     project=project, tls=tls, tls_cert=tls_cert, tls_key=tls_key, tls_san=tls_san, front=front)
    config = _in_child(_prepare, config)
    click.echo(f"cargohold serving {config.paths.root} on {'https' if config.tls else 'http'}://{config.bind}",
               err=True)
    try:
        server = ApplianceServer(config)
    except FrontError as exc:
        raise click.ClickException(str(exc)) from None
    server.run()


def _prepare(config: Config) -> Config:
    """Set-up before serving: migrate, create the admin, ensure TLS material; the config to serve with."""
    from web.app import build_services

    services = build_services(config)
    generated = services.users.bootstrap_admin(config.admin_password)
    if generated:
        click.echo(f"Created user 'admin' with password: {generated}\n"
                   "This is shown once. Change it with `cargohold admin set-password`.", err=True)
    if config.tls:
        from web.tls import ensure_server_certificate

        try:
            cert, key = ensure_server_certificate(config)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        config = _config(**{**config.__dict__, "tls_cert": cert, "tls_key": key})
    return config


def _in_child(work: Callable[[Config], Config], config: Config) -> Config:
    """Run `work` in a forked child and return its result, so this process never holds SQLite or data files.

    SQLite forbids carrying a connection (or its POSIX locks) across fork(), and
    the gunicorn master forks every worker: its set-up runs in a child that
    exits, and only the resulting settings come back (as JSON over a pipe).
    Raises ClickException with the child's message if the work failed.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: do the work, report, and exit without running the parent's cleanup
        os.close(read_end)
        status, message = 0, ""
        try:
            result = work(config)
            message = json.dumps({"tls_cert": str(result.tls_cert or ""), "tls_key": str(result.tls_key or "")})
        except click.ClickException as exc:
            status, message = 2, exc.format_message()
        except BaseException as exc:  # anything else: a bug; its traceback goes to the log, the parent reports it
            traceback.print_exc()
            status, message = 1, f"set-up failed: {exc!r} (traceback above)"
        with os.fdopen(write_end, "w") as out:
            out.write(message)
        sys.stderr.flush()
        os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        message = pipe.read()
    _, wait_status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(wait_status)
    if code != 0:
        raise click.ClickException(message or f"set-up exited with status {code}")
    paths = json.loads(message)
    return _config(**{**config.__dict__, "tls_cert": Path(paths["tls_cert"]) if paths["tls_cert"] else None,
                      "tls_key": Path(paths["tls_key"]) if paths["tls_key"] else None})


@main.group()
def admin() -> None:
    """Manage appliance users."""


@admin.command("set-password")
@data_dir_option
@click.option("--username", default="admin", show_default=True)
@click.password_option(envvar="CARGOHOLD_NEW_PASSWORD")
def set_password(data_dir: Path | None, username: str, password: str) -> None:
    """Set a user's password (prompted; never taken from the command line)."""
    from web.app import build_services

    try:
        build_services(_config(data_dir=data_dir)).users.set_password(username, password)
    except ValueError as exc:  # an invalid user name (robot$ names are reserved for robot accounts)
        raise click.UsageError(str(exc)) from None
    click.echo(f"password set for {username}", err=True)


@main.group()
def tls() -> None:
    """The appliance's TLS material."""


@tls.command("ca")
@data_dir_option
def tls_ca(data_dir: Path | None) -> None:
    """Print the local CA certificate (PEM) that edge hosts should trust."""
    from web.tls import TLSFiles

    config = _config(data_dir=data_dir)
    path = TLSFiles.of(config.paths).ca_cert
    try:
        pem = path.read_text()
    except FileNotFoundError:
        raise click.ClickException(f"no local CA at {path}: start the appliance once with "
                                   "`cargohold serve --tls` (without --tls-cert/--tls-key) to generate it") from None
    click.echo(pem, nl=False)


@main.group()
def bundle() -> None:
    """Build, import and inspect content bundles."""


@main.group()
def keys() -> None:
    """Signing keys and the appliance's trusted keys."""


@main.group()
def inventory() -> None:
    """What content this appliance holds."""


# Command modules add themselves to the groups above.
from web import cli_build, cli_clusterdef, cli_import  # noqa: E402,F401

cli_clusterdef.register(main)
from web import cli_release  # noqa: E402

cli_release.register(main)
from web import cli_tags  # noqa: E402

cli_tags.register(main)

if __name__ == "__main__":
    # Under `python -m web.cli` this file is __main__, while the command modules
    # add their commands to the groups of the imported `web.cli`: run that one.
    from web.cli import main as _imported_main

    sys.exit(_imported_main())
