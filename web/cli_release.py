"""`cargohold release ...`, `cargohold gc|scrub|expire`, `cargohold disk`: releases and the disk.

`register(main)` adds them to the `cargohold` group. A thin layer over
`bundles.releases` and the maintenance jobs (`bundles.maintenance_jobs`),
working on the data directory directly while the server may be running
(SQLite in WAL mode). `gc`, `scrub` and `expire` take the same one
maintenance slot as the API, the UI and the schedule: while another job
runs they stop with its name (exit 1), or with ``--wait`` wait for it. They
show progress on standard error (a bar on a terminal, a line every few
seconds otherwise). Audit entries from here name the operating-system user
with ``(cli)`` and the source ``local``.
"""

from __future__ import annotations

import getpass
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import click

from web.cli import _config, existing_data_dir_option
from web.cli_import import StderrProgress


def _releases(data_dir: Path | None) -> Any:
    from bundles.releases import Releases
    from registry.names import parse_mapping_rules
    from web.app import build_services

    config = _config(data_dir=data_dir)
    services = build_services(config)
    try:
        rules = parse_mapping_rules(config.mapping_rules)
    except ValueError as exc:
        raise click.UsageError(f"CARGOHOLD_MAPPING_RULES: {exc}") from None
    return services, Releases(services.registry, config.project, rules, services.audit)


def _who() -> str:
    try:
        return f"{getpass.getuser()} (cli)"
    except (KeyError, OSError):
        return "unknown (cli)"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) if t else "-"


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    for row in (header, *rows):
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _guard(fn: Any, *args: Any, **kwargs: Any) -> Any:
    from bundles.releases import ReleaseError

    try:
        return fn(*args, **kwargs)
    except ReleaseError as exc:
        raise click.ClickException(exc.message) from None


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _echo_json(doc: Any, as_json: bool) -> bool:
    """Print `doc` as JSON when --json was given; True when it was (the caller prints nothing more)."""
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    return as_json


def _image(i: dict[str, Any]) -> str:
    """``repository[:tag]@digest`` of a release image."""
    return f"{i['repository']}{':' + i['tag'] if i['tag'] else ''}@{i['digest']}"


def _echo_added_removed(changes: dict[str, Any], indent: str, describe: Callable[[dict[str, Any]], str]) -> None:
    """The ``+`` (added) then ``-`` (removed) lines of one section of a release diff."""
    for sign, key in (("+", "added"), ("-", "removed")):
        for item in changes[key]:
            click.echo(f"{indent}{sign} {describe(item)}")


@click.group()
def release() -> None:
    """Releases: what each bundle import staged; diff, check, promote, roll back, discard."""


@release.command("list")
@existing_data_dir_option
@json_option
def list_cmd(data_dir: Path | None, as_json: bool) -> None:
    """List releases, oldest first, with their disk usage."""
    _, releases = _releases(data_dir)
    usage = releases.usage()
    items = [{**r.to_json(), "usage": usage.get(r.id)} for r in releases.all()]
    if _echo_json({"releases": items}, as_json):
        return
    _table(("ID", "NAME", "VERSION", "STATE", "IMPORTED (UTC)", "PROMOTED (UTC)", "SIZE", "UNIQUE"),
           [(str(r["id"]), r["name"], r["version"] or "-", r["state"] + (" (forced)" if r["forced"] else ""),
             _when(r["importedAt"]), _when(r["promotedAt"]), _size(r["usage"]["bytes"]),
             _size(r["usage"]["uniqueBytes"])) for r in items])


@release.command("show")
@existing_data_dir_option
@click.argument("release_id")
@json_option
def show_cmd(data_dir: Path | None, release_id: str, as_json: bool) -> None:
    """One release: its images (pending tag moves marked), definitions, usage. RELEASE_ID may be 'promoted'."""
    _, releases = _releases(data_dir)
    doc = _guard(releases.show, release_id)
    if _echo_json(doc, as_json):
        return
    click.echo(f"release {doc['id']}: {doc['name']} {doc['version']} ({doc['state']})")
    click.echo(f"  bundle {doc['bundle']}  key {doc['keyId'] or '-'}  imported {_when(doc['importedAt'])} UTC")
    if doc["promotedAt"]:
        click.echo(f"  promoted {_when(doc['promotedAt'])} UTC by {doc['promotedBy']}"
                   + (f" FORCED: {doc['reason']}" if doc["forced"] else ""))
    click.echo(f"  uses {_size(doc['usage']['bytes'])}, {_size(doc['usage']['uniqueBytes'])} used by no other "
               "release")
    for i in doc["images"]:
        mark = "  (pending: moves at promotion)" if i["pending"] else ""
        click.echo(f"  {_image(i)}{mark}")
    for d in doc["clusterDefinitions"]:
        click.echo(f"  cluster definition {d['name']} {d['version']}")


@release.command("diff")
@existing_data_dir_option
@click.argument("ids", nargs=-1, required=True)
@json_option
def diff_cmd(data_dir: Path | None, ids: tuple[str, ...], as_json: bool) -> None:
    """Differences between releases: `diff FROM TO`, or `diff TO` against the promoted release."""
    _, releases = _releases(data_dir)
    if len(ids) > 2:
        raise click.UsageError("give one release (compared with the promoted one) or two")
    old, new = (ids if len(ids) == 2 else ("promoted", ids[0]))
    doc = _guard(releases.diff, old, new)
    if _echo_json(doc, as_json):
        return
    f, t = doc["from"], doc["to"]
    click.echo(f"release {f['id']} ({f['name']} {f['version']}) -> release {t['id']} ({t['name']} {t['version']})")
    imgs = doc["images"]
    _echo_added_removed(imgs, "  ", _image)
    for i in imgs["changed"]:
        click.echo(f"  ~ {i['repository']}:{i['tag']}  {i['from']} -> {i['to']}")
    click.echo(f"  {len(imgs['added'])} added, {len(imgs['removed'])} removed, {len(imgs['changed'])} changed, "
               f"{imgs['unchanged']} unchanged; {_size(doc['bytes']['new'])} new on disk "
               f"({doc['bytes']['newBlobs']} blobs)")
    defs = doc["clusterDefinitions"]
    _echo_added_removed(defs, "  ", lambda d: f"cluster definition {d['name']} {d['version']}")
    for d in defs["changed"]:
        click.echo(f"  ~ cluster definition {d['name']} {d['from']} -> {d['to']}")
        _echo_added_removed(d["packs"], "      ", lambda p: f"pack {p['profile']}/{p['pack']} {p['version']}")
        for p in d["packs"]["changed"]:
            click.echo(f"      ~ pack {p['profile']}/{p['pack']} {p['from']} -> {p['to']}")
        for v in d["variables"]["added"]:
            click.echo(f"      + variable {v['profile']}/{v['name']} (default {v['default']!r})")
        for v in d["variables"]["removed"]:
            click.echo(f"      - variable {v['profile']}/{v['name']}")
        for v in d["variables"]["changed"]:
            click.echo(f"      ~ variable {v['profile']}/{v['name']} default {v['from']!r} -> {v['to']!r}")


@release.command("check")
@existing_data_dir_option
@click.argument("release_id")
@json_option
def check_cmd(data_dir: Path | None, release_id: str, as_json: bool) -> None:
    """Check a release's cluster definitions as they will be after promotion; exit 1 when not ready."""
    _, releases = _releases(data_dir)
    result = _guard(releases.check, release_id)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        for r in result["definitions"]:
            counts = ", ".join(f"{k} {v}" for k, v in r["counts"].items() if v)
            click.echo(f"{r['definition']}: {'READY' if r['ready'] else 'NOT READY'} ({counts})")
            for finding in r["findings"]:
                if finding["finding"] != "present":
                    click.echo(f"  {finding['reference']}: {finding['finding']} {finding['detail']}")
        if not result["definitions"]:
            click.echo("the release carries no cluster definition: nothing to check")
    if not result["ready"]:
        raise SystemExit(1)


@release.command("promote")
@existing_data_dir_option
@click.argument("release_id")
@click.option("--force", is_flag=True, help="Promote even when the check fails (needs --reason; recorded).")
@click.option("--reason", default=None, help="Why a failing release is promoted anyway.")
@json_option
def promote_cmd(data_dir: Path | None, release_id: str, force: bool, reason: str | None, as_json: bool) -> None:
    """Check, then move every tag of the release in one step."""
    _, releases = _releases(data_dir)
    result = _guard(releases.promote, release_id, _who(), "local", force, reason)
    if _echo_json(result, as_json):
        return
    r = result["release"]
    click.echo(f"promoted release {r['id']} ({r['name']} {r['version']}): {result['tagsMoved']} tag(s) moved"
               + (f"; FORCED although not ready: {r['reason']}" if result["forced"] else ""))


@release.command("rollback")
@existing_data_dir_option
@json_option
def rollback_cmd(data_dir: Path | None, as_json: bool) -> None:
    """Put the previously promoted release's tags back in one step."""
    _, releases = _releases(data_dir)
    result = _guard(releases.rollback, _who(), "local")
    if _echo_json(result, as_json):
        return
    r, back = result["release"], result["rolledBack"]
    click.echo(f"rolled back release {back['id']} ({back['name']} {back['version']}); release {r['id']} "
               f"({r['name']} {r['version']}) is promoted again: {result['tagsMoved']} tag(s) moved")


@release.command("discard")
@existing_data_dir_option
@click.argument("release_id")
@click.option("--reason", default=None, help="Why the release is discarded (recorded in the audit log).")
@json_option
def discard_cmd(data_dir: Path | None, release_id: str, reason: str | None, as_json: bool) -> None:
    """Discard a release that will not be promoted: GC retention no longer keeps its content.

    Refused for the promoted release and the one a rollback would restore.
    Tags the release published at import stay (and keep their content).
    """
    _, releases = _releases(data_dir)
    result = _guard(releases.discard, release_id, _who(), "local", reason)
    if _echo_json(result, as_json):
        return
    r = result["release"]
    click.echo(f"discarded release {r['id']} ({r['name']} {r['version']}, was {result['was']}); "
               "`cargohold gc` reclaims what no tag or other release uses")


class JobProgress(StderrProgress):
    """A maintenance job's phase and count on stderr: redrawn in place on a terminal, a line every few seconds
    (or on a new phase) otherwise."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self._phase = ""

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if phase == self._phase and now - self._last < (0.2 if self.tty else 5.0) and (done < total or not total):
            return
        self._last, self._phase = now, phase
        if total:
            filled = int(30 * min(done, total) / total)
            self._draw(f"{phase:<16} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}", 80)
        else:
            self._draw(f"{phase}...", 80)


wait_option = click.option("--wait", is_flag=True,
                           help="If another maintenance job runs, wait for it to end instead of stopping.")
quiet_option = click.option("--quiet", is_flag=True, help="No progress on standard error.")


def _run_job(data_dir: Path | None, kind: str, dry_run: bool, options: Any, wait: bool, quiet: bool) -> Any:
    """Run one maintenance job here, in the one slot; the finished job. A busy slot: exit 1 naming the job."""
    from bundles.maintenance_jobs import JobBusy
    from web.maintenance import maintenance_jobs

    services, releases = _releases(data_dir)
    jobs = maintenance_jobs(services.config, releases, services.uploads, services.audit)
    bar = None if quiet else JobProgress()
    try:
        if wait and not quiet:
            running = jobs.running()
            if running is not None:
                click.echo(f"waiting: {running.title.lower()} {running.id} is running", err=True)
        return jobs.run(kind, dry_run, _who(), "local", options, bar, wait=7 * 86400.0 if wait else None)
    except JobBusy as exc:
        raise click.ClickException(f"{exc}. Nothing was started; wait for it to finish, or pass --wait.") from None
    finally:
        if bar is not None:
            bar.close()


def _failed(job: Any) -> None:
    if job.state != "done" or job.result is None:
        raise click.ClickException(f"{job.title} {job.id} {job.state}: {job.error}")


@click.command("gc")
@existing_data_dir_option
@click.option("--dry-run", is_flag=True, help="List what would go and how many bytes; change nothing.")
@click.option("--retain", type=click.IntRange(min=1), default=None,
              help="Releases to keep: the promoted one and the ones promoted before it [default: 3].")
@click.option("--grace", default="1h", show_default=True,
              help="Leave content newer than this alone (in-progress pushes and imports): 90, 30s, 15m, 2h, 1d.")
@click.option("--kubeconfig", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Cluster whose running images are protected [default: CARGOHOLD_KUBECONFIG, or in-cluster].")
@click.option("--context", default=None, help="kubeconfig context.")
@click.option("--ignore-cluster", is_flag=True,
              help="Collect even when the configured cluster cannot be reached (no in-use protection).")
@wait_option
@quiet_option
@json_option
def gc_cmd(data_dir: Path | None, dry_run: bool, retain: int | None, grace: str, kubeconfig: Path | None,
           context: str | None, ignore_cluster: bool, wait: bool, quiet: bool, as_json: bool) -> None:
    """Garbage-collect content no tag, kept release or running cluster needs (online).

    Runs as a maintenance job (listed in the API and the UI); only one runs at a time.
    """
    from bundles.gc_policy import DEFAULT_RETAIN, GcRefused
    from bundles.maintenance_jobs import GC, JobOptions
    from registry.gc import parse_grace

    try:
        grace_seconds = parse_grace(grace)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--grace") from None
    options = JobOptions(retain=retain or DEFAULT_RETAIN, grace_seconds=grace_seconds, ignore_cluster=ignore_cluster,
                         kubeconfig=str(kubeconfig) if kubeconfig else None, context=context)
    try:
        job = _run_job(data_dir, GC, dry_run, options, wait, quiet)
    except GcRefused as exc:
        raise click.ClickException(str(exc)) from None
    _failed(job)
    report = job.result
    for w in report["warnings"]:
        click.echo(w if w.startswith("WARNING") else f"warning: {w}", err=True)
    if _echo_json(report, as_json):
        return
    verb = "would remove" if dry_run else "removed"
    for m in report["manifestsRemoved"]:
        click.echo(f"  manifest {m['repository']}@{m['digest']}")
    for b in report["blobsRemoved"]:
        click.echo(f"  blob {b['digest']} ({_size(b['size'])})")
    click.echo(f"{verb} {len(report['manifestsRemoved'])} manifest(s), {len(report['blobsRemoved'])} blob(s): "
               f"{_size(report['bytesReclaimed'])}; {report['uploadsExpired']} stale upload(s), "
               f"{_size(report['uploadBytesReclaimed'])}; kept releases {report['keptReleases']} (job {job.id})")
    if report["cluster"].get("reachable"):
        click.echo(f"protected {len(report['cluster']['protectedDigests'])} digest(s) the cluster runs "
                   f"({report['cluster']['pods']} pods)")
    if report["deferred"]:
        click.echo(f"note: {report['deferred']}", err=True)


@click.command("scrub")
@existing_data_dir_option
@click.option("--no-quarantine", is_flag=True, help="Only report damaged blobs; leave them in place.")
@click.option("--rate", type=click.IntRange(min=0), default=None,
              help="Read at most this many bytes per second (0: no limit) [default: CARGOHOLD_SCRUB_RATE_BYTES, "
                   "64 MiB/s].")
@wait_option
@quiet_option
@json_option
def scrub_cmd(data_dir: Path | None, no_quarantine: bool, rate: int | None, wait: bool, quiet: bool,
              as_json: bool) -> None:
    """Re-hash every blob; report and quarantine those whose bytes no longer match. Exit 1 when any.

    Runs as a maintenance job at a limited read rate; only one job runs at a time.
    """
    from bundles.maintenance_jobs import SCRUB, JobOptions

    job = _run_job(data_dir, SCRUB, False, JobOptions(quarantine=not no_quarantine, rate_bytes=rate), wait, quiet)
    _failed(job)
    report = job.result
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        for d in report["damaged"]:
            click.echo(f"DAMAGED {d['digest']}: bytes hash to {d['actual']}"
                       + (f"; quarantined at {d['quarantined']}" if d["quarantined"] else ""))
        for m in report["missing"]:
            click.echo(f"MISSING {m}: recorded but its file is gone")
        click.echo(f"checked {report['checked']} blobs ({_size(report['bytes'])}): {len(report['damaged'])} damaged, "
                   f"{len(report['missing'])} missing"
                   + ("; import the bundle again or push the image again to repair" if not report["ok"] else ""))
    if not report["ok"]:
        raise SystemExit(1)


@click.command("expire")
@existing_data_dir_option
@wait_option
@quiet_option
@json_option
def expire_cmd(data_dir: Path | None, wait: bool, quiet: bool, as_json: bool) -> None:
    """Remove stale uploads (idle longer than CARGOHOLD_UPLOAD_EXPIRY_SECONDS) and dead imports' staging.

    Runs as a maintenance job; only one job runs at a time.
    """
    from bundles.maintenance_jobs import EXPIRE

    job = _run_job(data_dir, EXPIRE, False, None, wait, quiet)
    _failed(job)
    report = job.result
    if _echo_json(report, as_json):
        return
    for name, label in (("uploads", "registry upload session(s)"), ("importUploads", "bundle upload(s)"),
                        ("staging", "import staging director(y/ies)")):
        step = report.get(name) or {"removed": 0, "bytes": 0}
        click.echo(f"removed {step['removed']} {label}: {_size(step['bytes'])}")


@click.command("disk")
@existing_data_dir_option
@json_option
def disk_cmd(data_dir: Path | None, as_json: bool) -> None:
    """Free space on the data volume, the size of every area of the data directory, and usage per release."""
    _, releases = _releases(data_dir)
    doc = releases.disk()
    if _echo_json(doc, as_json):
        return
    v = doc["volume"]
    click.echo(f"data volume {doc['dataDir']}: {_size(v['free'])} free of {_size(v['total'])}; store holds "
               f"{doc['store']['blobs']} blobs, {_size(doc['store']['bytes'])}")
    _table(("AREA", "SIZE"), [(a["name"], _size(a["bytes"])) for a in doc["areas"]])
    click.echo()
    _table(("ID", "NAME", "VERSION", "STATE", "SIZE", "UNIQUE"),
           [(str(r["id"]), r["name"], r["version"] or "-", r["state"], _size(r["bytes"]), _size(r["uniqueBytes"]))
            for r in doc["releases"]])


def register(group: click.Group) -> None:
    """Add `release`, `gc`, `scrub`, `expire` and `disk` to the top-level group."""
    for command in (release, gc_cmd, scrub_cmd, expire_cmd, disk_cmd):
        group.add_command(command)
