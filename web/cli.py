"""The `cargohold` command line: a thin layer over the core the API uses."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from web.config import Config


def _config(**overrides: object) -> Config:
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
@click.option("--threads", type=int, default=None, help="Threads per gthread worker [default: 16].")
@click.option("--project", default=None, help="Harbor project for bundle images [default: spectro-images].")
@click.option("--tls/--no-tls", default=None, help="Serve HTTPS (generates a local CA and certificate if none given).")
@click.option("--tls-cert", type=click.Path(path_type=Path), default=None, help="PEM certificate chain for --tls.")
@click.option("--tls-key", type=click.Path(path_type=Path), default=None, help="PEM private key for --tls.")
def serve(data_dir: Path | None, bind: str | None, workers: int | None, worker_class: str | None,
          threads: int | None, project: str | None, tls: bool | None, tls_cert: Path | None,
          tls_key: Path | None) -> None:
    """Run the appliance under gunicorn."""
    from web.app import build_services
    from web.server import ApplianceServer

    config = _config(data_dir=data_dir, bind=bind, workers=workers, worker_class=worker_class, threads=threads,
                     project=project, tls=tls, tls_cert=tls_cert, tls_key=tls_key)
    services = build_services(config)
    generated = services.users.bootstrap_admin(config.admin_password)
    if generated:
        click.echo(f"Created user 'admin' with password: {generated}\n"
                   "This is shown once. Change it with `cargohold admin set-password`.", err=True)
    if config.tls:
        from web.tls import ensure_server_certificate

        cert, key = ensure_server_certificate(config)
        config = _config(**{**config.__dict__, "tls_cert": cert, "tls_key": key})
    click.echo(f"cargohold serving {config.paths.root} on {'https' if config.tls else 'http'}://{config.bind}",
               err=True)
    ApplianceServer(config).run()


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

    build_services(_config(data_dir=data_dir)).users.set_password(username, password)
    click.echo(f"password set for {username}", err=True)


if __name__ == "__main__":
    sys.exit(main())
