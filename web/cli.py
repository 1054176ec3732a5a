"""The `cargohold` command line: a thin layer over the core the API uses.

Every command that works on a data directory names it first, on standard
error (``Data directory: /abs/path``), so standard output stays the
command's own (JSON, PEM, file lists). Errors are one ``Error:`` line:
exit status 1 for a refusal or a problem of the machine (a path the system
refuses, a data directory that holds no appliance or is being served), 2 for
a usage error (a bad option, a bad --bind). Only a bug prints a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from registry.paths import DataPaths
from registry.version import VERSION
from web import settings
from web.config import FRONTS, Config
from web.logs import json_mode, say

_CONFIG_FILE = "cargohold.config_file"  # ctx.meta key: the --config FILE of this invocation


def _config(**overrides: Any) -> Config:
    """The settings: defaults < config file (--config or $CARGOHOLD_CONFIG) < CARGOHOLD_* < `overrides`.

    A refused setting is one ``Error:`` line naming it, exit status 2 (as a bad option).
    """
    ctx = click.get_current_context(silent=True)
    config_file = ctx.meta.get(_CONFIG_FILE) if ctx is not None else None
    try:
        return Config.from_env(config_file=config_file, **overrides)
    except ValueError as exc:
        error = click.ClickException(str(exc))
        error.exit_code = 2
        raise error from None


def _remember_config_file(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    """The --config callback (eager: before --data-dir's, which reads the settings)."""
    if value is not None:
        ctx.meta[_CONFIG_FILE] = value


class _Main(click.Group):
    """The top-level group: problems of the machine become one ``Error:`` line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from registry.upgrade import DataDirTooNew
        from web.datadir import DataDirError, environment_error

        try:
            try:
                return super().invoke(ctx)
            except (DataDirError, DataDirTooNew) as exc:
                raise click.ClickException(str(exc)) from None
            except OSError as exc:
                message = environment_error(exc)
                if message is None:
                    raise  # a bug: its traceback is what a report needs
                raise click.ClickException(message) from None
        except click.ClickException as exc:
            if not json_mode():
                raise
            # In JSON mode (CARGOHOLD_LOG_FORMAT=json) the error is a log record too, with the same exit status.
            say(f"Error: {exc.format_message()}", logging.ERROR)
            raise click.exceptions.Exit(exc.exit_code) from None


@click.group(cls=_Main)
@click.version_option(VERSION, prog_name="cargohold", message="%(prog)s %(version)s")
def main() -> None:
    """cargohold: signed content bundles into an on-site OCI registry."""
    _configure_logging()


def _configure_logging() -> None:
    """Log to standard error as CARGOHOLD_LOG_LEVEL and _FORMAT say (web/logs.py); a bad value is a usage error.

    Every command, `serve` included: the processes serve forks inherit it.
    """
    from web.logs import LogSettings, configure

    try:
        settings = LogSettings.of(_config())
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    configure(settings)


def _announce_data_dir(existing: bool) -> Callable[[click.Context, click.Parameter, Path | None], Path | None]:
    """A --data-dir callback: name the directory on stderr and, if `existing`, refuse one without an appliance."""
    def callback(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
        from web.datadir import DataDirError, check_location, require_appliance

        if ctx.resilient_parsing:  # shell completion: no output, no checks
            return value
        paths = _config(data_dir=value).paths
        say(f"Data directory: {paths.root}")
        config_file = settings.config_file(ctx.meta.get(_CONFIG_FILE), os.environ)
        if config_file is not None:
            say(f"Config file: {config_file.resolve()}")
        try:
            (require_appliance if existing else check_location)(paths)
        except DataDirError as exc:
            raise click.ClickException(str(exc)) from None
        # What this command does (an import, a GC) counts in the serving appliance's metrics, if one serves.
        from web.metrics_dir import adopt_for_command

        adopt_for_command(paths)
        return value
    return callback


_DATA_DIR_HELP = "Data directory [default: ./cargohold-data, or CARGOHOLD_DATA_DIR]"
# Every command with --data-dir also takes --config: the same settings as `serve`.
_config_option = click.option(
    "--config", type=click.Path(path_type=Path, dir_okay=False), default=None, is_eager=True, expose_value=False,
    callback=_remember_config_file, metavar="FILE",
    help=f"TOML config file (keys: the setting names of the README's table) [default: ${settings.CONFIG_ENV}, "
         "or none].")


def _with_config_option(data_dir: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda function: _config_option(data_dir(function))


# For commands that may start a new appliance's directory (serve, imports, adding keys).
data_dir_option = _with_config_option(click.option(
    "--data-dir", type=click.Path(path_type=Path), default=None, callback=_announce_data_dir(existing=False),
    help=f"{_DATA_DIR_HELP}."))
# For commands that read or change an existing appliance: a directory without one is refused, not created.
existing_data_dir_option = _with_config_option(click.option(
    "--data-dir", type=click.Path(path_type=Path), default=None, callback=_announce_data_dir(existing=True),
    help=f"{_DATA_DIR_HELP}; must hold an appliance."))


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
@click.option("--seed-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Seed directory whose bundles and definitions are imported at start [default: <data>/seed].")
@click.option("--seed-scan/--no-seed-scan", default=None,
              help="Scan the seed directory at start [default: on, or CARGOHOLD_SEED_SCAN].")
def serve(data_dir: Path | None, bind: str | None, workers: int | None, worker_class: str | None,
          threads: int | None, project: str | None, tls: bool | None, tls_cert: Path | None,
          tls_key: Path | None, tls_san: str | None, front: str | None, seed_dir: Path | None,
          seed_scan: bool | None) -> None:
    """Run the appliance: the nginx front and the app under gunicorn.

    Only one serve runs on a data directory: a second one stops at once,
    before any set-up. An existing server certificate is never replaced
    here (see `cargohold tls issue`).
    """
    from web.datadir import acquire_serve_lock
    from web.front import FrontError
    from web.metrics_dir import MetricsDirError, prepare_for_serve, remove_after_serve
    from web.server import ApplianceServer, BindError, check_bind

    config = _config(data_dir=data_dir, bind=bind, workers=workers, worker_class=worker_class, threads=threads,
                     project=project, tls=tls, tls_cert=tls_cert, tls_key=tls_key, tls_san=tls_san, front=front,
                     seed_dir=seed_dir, seed_scan=seed_scan)
    try:
        config.schedules  # noqa: B018  (refuse a schedule that is not one before any set-up, naming the setting)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        check_bind(config.bind)
    except BindError as exc:
        error = click.ClickException(str(exc))
        error.exit_code = 2  # a usage error, in one line: the usage text says nothing about addresses
        raise error from None
    if config.admin_password is not None and not config.paths.database.exists():
        _check_admin_password(config.admin_password)  # a first start: refuse before creating anything
    # Before any set-up, and held until this process (and the workers it forks) exits.
    _lock = acquire_serve_lock(config.paths)  # kept referenced (and open) for the life of serve
    # Before anything imports prometheus_client or forks: every process of this serve records there.
    try:
        metrics_dir = prepare_for_serve(config.paths, config.runtime_dir)
    except MetricsDirError as exc:
        raise click.ClickException(str(exc)) from None
    owner = os.getpid()
    config = _in_child(_prepare, config)
    say(f"cargohold serving {config.paths.root} on {'https' if config.tls else 'http'}://{config.bind}")
    try:
        try:
            server = ApplianceServer(config)
        except FrontError as exc:
            raise click.ClickException(str(exc)) from None
        server.run()
    finally:
        remove_after_serve(metrics_dir, owner)


def _prepare(config: Config) -> Config:
    """Set-up before serving: migrate, create the admin, ensure TLS material; the config to serve with."""
    from registry.auth import ADMIN
    from registry.s3store import StorageConfigError
    from registry.upgrade import DataDirTooNew
    from web.app import build_services
    from web.storage import blob_store

    # One clear line at start rather than a 500 on the first pull, and before anything is migrated or created:
    # the object store's URL and keys must be usable and its bucket there.
    try:
        store = blob_store(config)
    except StorageConfigError as exc:
        raise click.ClickException(str(exc)) from None
    config.paths.ensure()  # a first start: the directories (a filesystem store's included) exist from here on
    problem = store.check()
    if problem is not None:
        raise click.ClickException(f"the blob store {store.describe()} is not usable: {problem}")
    try:
        services = build_services(config)  # migrates; an older data directory is backed up first (registry.upgrade)
    except DataDirTooNew as exc:
        raise click.ClickException(str(exc)) from None
    if services.users.stored(ADMIN) is not None:
        if config.admin_password is not None:
            # Never the value: only that it has no effect any more.
            say("warning: CARGOHOLD_ADMIN_PASSWORD is ignored: it sets the admin password on the first "
                "start only, and user 'admin' already exists. Change the password with `cargohold admin "
                "set-password`, and remove the variable from the environment (or admin_password from the config "
                "file).", logging.WARNING)
    else:
        if config.admin_password is not None:
            _check_admin_password(config.admin_password)
        generated = services.users.bootstrap_admin(config.admin_password)
        if generated:
            from web import initial_password

            # The path, never the password: consoles and journals are read by more people than the data directory.
            path = initial_password.write(config.paths, generated)
            say(f"Created user 'admin'. Its password is in {path} (readable by this service account only).\n"
                "Sign in to the web UI as admin with it; you will be asked to choose a new password, "
                "and the file is then deleted.")
    if config.tls:
        from web.tls import ensure_server_certificate

        try:
            cert, key = ensure_server_certificate(config)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        config = _config(**{**config.__dict__, "tls_cert": cert, "tls_key": key})
    return config


def _check_admin_password(password: str) -> None:
    """Refuse a first-start CARGOHOLD_ADMIN_PASSWORD the password policy refuses (naming the rule, not the value)."""
    from registry.auth import ADMIN
    from registry.passwords import PasswordPolicyError, check_password_policy

    try:
        check_password_policy(ADMIN, password)
    except PasswordPolicyError as exc:
        raise click.ClickException(f"CARGOHOLD_ADMIN_PASSWORD: {exc}") from None


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
        except OSError as exc:
            from web.datadir import environment_error

            status, message = 1, environment_error(exc) or ""
            if not message:
                traceback.print_exc()
                message = f"set-up failed: {exc!r} (traceback above)"
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


NEW_PASSWORD_ENV = "CARGOHOLD_NEW_PASSWORD"
password_file_option = click.option(
    "--password-file", type=click.Path(path_type=Path, dir_okay=False, allow_dash=True), default=None,
    help=f"Read the password from this file ('-': standard input); one trailing newline is dropped. "
         f"Without it: ${NEW_PASSWORD_ENV}, else a prompt on the terminal.")


def _new_password(password_file: Path | None) -> str:
    """The new password from --password-file, $CARGOHOLD_NEW_PASSWORD or a prompt; never the command line."""
    if password_file is not None:
        try:
            text = sys.stdin.read() if str(password_file) == "-" else password_file.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise click.UsageError(f"cannot read --password-file {password_file}: "
                                   f"{getattr(exc, 'strerror', None) or exc}") from None
        return text.removesuffix("\n").removesuffix("\r")
    if os.environ.get(NEW_PASSWORD_ENV):
        return os.environ[NEW_PASSWORD_ENV]
    if not sys.stdin.isatty():
        raise click.UsageError(f"no password given: run on a terminal to be asked for it, or pass --password-file "
                               f"FILE ('-' for standard input) or set ${NEW_PASSWORD_ENV}")
    return str(click.prompt("New password", hide_input=True, confirmation_prompt=True))


def audit_local(paths: DataPaths, operation: str, resource_type: str, resource: str) -> None:
    """Record a change made on the box in the audit log (and so in the log): the OS user "(cli)", from "local"."""
    import getpass

    from registry.audit import append
    from registry.db import open_database, write_transaction

    try:
        who = f"{getpass.getuser()} (cli)"
    except (KeyError, OSError):
        who = "unknown (cli)"
    with write_transaction(open_database(paths)) as db:
        append(db, who, operation, resource_type, resource, "local")


def _users(data_dir: Path | None) -> Any:
    from web.app import build_services

    return build_services(_config(data_dir=data_dir)).users


@admin.command("add-user")
@existing_data_dir_option
@click.argument("username")
@click.option("--admin", "is_admin", is_flag=True, help="Make the user a system administrator.")
@password_file_option
def add_user(data_dir: Path | None, username: str, is_admin: bool, password_file: Path | None) -> None:
    """Create the user USERNAME (refused if it exists).

    The password: 12 to 1024 characters, not the user name, not one
    character repeated, no control characters (docs/operations.md).
    """
    password = _new_password(password_file)
    try:
        users = _users(data_dir)
        users.add_user(username, password, admin=is_admin)
    except ValueError as exc:  # a bad name, a name taken, a password the policy refuses
        raise click.ClickException(str(exc)) from None
    audit_local(users.registry.paths, "create", "user", username + (" (administrator)" if is_admin else ""))
    click.echo(f"created {'administrator' if is_admin else 'user'} {username}", err=True)


@admin.command("set-password")
@existing_data_dir_option
@click.option("--username", default="admin", show_default=True)
@password_file_option
def set_password(data_dir: Path | None, username: str, password_file: Path | None) -> None:
    """Change an existing user's password (never creates a user; see `admin add-user`).

    The password: 12 to 1024 characters, not the user name, not one
    character repeated, no control characters (docs/operations.md).
    """
    password = _new_password(password_file)
    try:
        users = _users(data_dir)
        users.set_password(username, password)
    except ValueError as exc:  # an unknown user, an invalid name, a password the policy refuses
        raise click.ClickException(str(exc)) from None
    from web import initial_password

    initial_password.changed(users.registry.paths, username)  # the generated first-start password is void now
    audit_local(users.registry.paths, "update", "user-password", username)
    click.echo(f"password set for {username}", err=True)


@main.group()
def tls() -> None:
    """The appliance's TLS material."""


@tls.command("ca")
@existing_data_dir_option
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


@tls.command("issue")
@existing_data_dir_option
@click.option("--san", "sans", multiple=True, metavar="NAME[,NAME...]",
              help="DNS name or IP address the certificate must carry, e.g. the cluster's virtual IP "
                   "(comma-separated, repeatable) [default: CARGOHOLD_TLS_SAN].")
@click.option("--bind", default=None, help="The address serve listens on, if it is a specific one.")
@click.option("--drop-old-names", is_flag=True,
              help="Leave out names of the current certificate that are not asked for now (edge hosts using "
                   "them will fail).")
def tls_issue(data_dir: Path | None, sans: tuple[str, ...], bind: str | None, drop_old_names: bool) -> None:
    """Issue a new server certificate by the local CA, and say what changed.

    Refused while an appliance serves the data directory: stop it, issue,
    start it again (it serves the new certificate from then on). Edge hosts
    that trust the local CA accept the new certificate as they did the old.
    """
    from web.datadir import acquire_serve_lock
    from web.tls import TLSConfigError, issue_server_certificate, missing_names, names_text

    config = _config(data_dir=data_dir, bind=bind, tls_san=",".join(sans) if sans else None)
    lock = acquire_serve_lock(config.paths, purpose="`cargohold tls issue`")
    try:
        issued = issue_server_certificate(config, keep_names=not drop_old_names)
    except TLSConfigError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        lock.release()
    new, old = issued.new, issued.old
    click.echo(f"issued {issued.cert} (key {issued.key}) by the local CA")
    if old is not None:
        click.echo(f"  old: SHA-256 {old.fingerprint}, expires {old.not_after:%Y-%m-%d}")
        click.echo(f"       names {names_text(old.names)}")
    click.echo(f"  new: SHA-256 {new.fingerprint}, expires {new.not_after:%Y-%m-%d}")
    click.echo(f"       names {names_text(new.names)}")
    if old is not None:
        added, dropped = missing_names(old.names, new.names), missing_names(new.names, old.names)
        click.echo(f"  added: {', '.join(added) or 'none'}; dropped: {', '.join(dropped) or 'none'}")
    click.echo("The appliance serves it from its next start (e.g. `systemctl start cargohold`).", err=True)


def mirror_scheme(paths: DataPaths, scheme: str) -> str:
    """The scheme `mirror-config` writes, said on stderr with why; `auto` without a local CA is refused.

    Edge hosts must never be pointed at plain http:// without someone
    choosing it: "auto" cannot tell a plain-HTTP appliance from one serving
    the operator's own certificate.
    """
    from web.tls import TLSFiles

    ca = TLSFiles.of(paths).ca_cert
    if scheme == "auto":
        if not ca.is_file():
            raise click.ClickException(
                f"--scheme auto cannot choose: there is no local CA at {ca}. Pass --scheme https if the "
                "appliance serves HTTPS with your own certificate (edge hosts must trust its CA), or --scheme "
                "http if it serves plain HTTP (edge hosts then pull in plain text)")
        click.echo(f"Scheme: https (the appliance's local CA {ca} goes into the files for edge hosts to trust)",
                   err=True)
        return "https"
    if scheme == "http":
        click.echo("Scheme: http, as asked: edge hosts will pull in plain text, unauthenticated by TLS", err=True)
    else:
        click.echo("Scheme: https, as asked" + ("" if ca.is_file() else
                                                 f" (no local CA at {ca}: edge hosts must already trust the "
                                                 "certificate's issuer)"), err=True)
    return scheme


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
from web import cli_seed  # noqa: E402

cli_seed.register(main)
from web import cli_images  # noqa: E402

cli_images.register(main)
from web import cli_backup  # noqa: E402

cli_backup.register(main)
from web import cli_follow  # noqa: E402

cli_follow.register(main)

if __name__ == "__main__":
    # Under `python -m web.cli` this file is __main__, while the command modules
    # add their commands to the groups of the imported `web.cli`: run that one.
    from web.cli import main as _imported_main

    sys.exit(_imported_main())
