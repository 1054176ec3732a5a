"""`cargohold backup DEST` and `cargohold restore SRC`: the command-line face of `registry.backup`.

Progress goes to standard error; `--json` prints the summary on standard
output. A refusal is one ``Error:`` line (exit 1) that names the problem.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import click

from registry.paths import DataPaths
from web.cli import _config, data_dir_option, existing_data_dir_option
from web.config import Config


def _refuse_object_store(config: Config, command: str) -> None:
    """With blobs in an object store, backup and restore are refused: they copy blobs as files of the data volume.

    Why not copy the objects into DEST: an object store is chosen because the blobs outgrow one machine's
    disk, and the engine keeps them safer with its own versioning and replication than one copy on another
    disk would. Copying only the database and keys would make a backup that cannot restore a registry.
    """
    if config.storage_url.strip():
        raise click.ClickException(
            f"`cargohold {command}` works with blobs on the data volume, and CARGOHOLD_STORAGE_URL puts them in an "
            "object store: protect them with the object store's own versioning or replication, and the data "
            "volume (database, keys) with a filesystem snapshot (docs/operations.md, \"Object storage\")")


def _progress(prefix: str) -> Callable[[str], None]:
    def report(message: str) -> None:
        click.echo(f"{prefix}: {message}", err=True)
    return report


@click.command("backup")
@click.argument("dest", type=click.Path(path_type=Path, file_okay=False))
@existing_data_dir_option
@click.option("--verify-existing", is_flag=True,
              help="Re-hash the blobs DEST already holds instead of trusting their names and sizes.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on standard output.")
def backup_cmd(dest: Path, data_dir: Path | None, verify_existing: bool, as_json: bool) -> None:
    """Back up the appliance into DEST while it serves: database, blobs, keys and TLS material.

    DEST may be an earlier backup: only blobs it lacks are copied, and blobs
    no longer recorded are pruned from it. The manifest
    (cargohold-backup.json) is written last; a DEST without it is unfinished.
    """
    from registry.backup import BackupError, backup

    # No migration here: a backup reads the data directory as it is (whichever version last migrated it,
    # which the manifest records), and never changes it.
    config = _config(data_dir=data_dir)
    _refuse_object_store(config, "backup")
    try:
        report = backup(config.paths, dest, _progress("backup"), verify_existing)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(f"backed up {report.blobs} blobs ({report.bytes} bytes) and {len(report.state_files)} state "
                   f"files into {report.dest}: {report.copied} blobs copied, {report.reused} already there, "
                   f"{report.pruned} pruned")


@click.command("restore")
@click.argument("source", type=click.Path(path_type=Path, file_okay=False, exists=True))
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on standard output.")
def restore_cmd(source: Path, data_dir: Path | None, as_json: bool) -> None:
    """Rebuild an appliance in a new or empty data directory from the backup SOURCE.

    Every blob's digest and every file's sha256 is verified while copying;
    anything that fails verification is named and nothing is left behind.
    Start the appliance on the directory afterwards (`cargohold serve`).
    """
    from registry.backup import BackupError, restore

    config = _config(data_dir=data_dir)
    _refuse_object_store(config, "restore")
    try:
        report = restore(source, config.paths, _progress("restore"), _serve_lock)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(f"restored {report.blobs} blobs ({report.bytes} bytes) and {report.state_files} state files "
                   f"from {report.source} (a cargohold {report.version} data directory) into {report.data_dir}; "
                   "start it with `cargohold serve`")


@contextlib.contextmanager
def _serve_lock(paths: DataPaths) -> Iterator[None]:
    """Keep `cargohold serve` off the directory while it is being restored."""
    from web.datadir import acquire_serve_lock

    lock = acquire_serve_lock(paths, purpose="`cargohold restore`")
    try:
        yield
    finally:
        lock.release()


def register(main: click.Group) -> None:
    """Add `backup` and `restore` to the top-level group."""
    main.add_command(backup_cmd)
    main.add_command(restore_cmd)
