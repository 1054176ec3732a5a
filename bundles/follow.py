"""A follower appliance: keep this data directory in step with a primary appliance's releases.

For sites with no shared storage: a second appliance copies what the
primary holds through the primary's own APIs, so edge hosts can list both as
registry mirrors and keep pulling when either dies. One round (`Follower.sync`):

1. Read the primary, as a robot account (Basic on the JSON API, the
   registry's token challenge on /v2/): its release events after the last
   one applied here (``GET /api/cargohold/v1/releases/events?after=N``),
   then its releases (``GET /api/cargohold/v1/releases``; read second, so
   every release an event names is in it).
2. Copy every release of the primary that is not here (or was discarded
   here while the primary still has it), oldest first, each all-or-nothing
   as an import is: manifests (indexes with every platform, referrers) by
   digest through /v2/, each verified against its digest; then, once the
   disk reserve (``import_reserve_bytes``) is known to hold the new content,
   blobs streamed into a staging directory on the data volume while they are
   hashed, refused unless size and digest match, then moved into the store;
   the release's files (charts, definition archives) through
   ``GET /releases/<id>/files/<digest>``, verified likewise; its cluster
   definitions parsed from those archives as an import parses them. Images a
   content-trust project here would refuse are refused, as an import refuses
   them. Then `bundles.importer.publish` records everything in ONE
   transaction with the import's staging rule (`bundles.releases.tag_plan`),
   with the primary-to-local release mapping (``follow_releases``): the
   release is staged here exactly as an import of its bundle would stage it.
   A failure removes the staging directory and publishes nothing of that
   release. An old release (superseded or rolled back) whose content the
   primary has collected is skipped, with its events.
3. Apply the primary's events in their order, idempotently (an event already
   in effect is skipped): a promotion replays the primary's decision
   (`Releases.promote(followed=...)`: no readiness check, the primary's
   forced flag and reason recorded), a rollback and a discard as on the
   primary. The last applied sequence number is kept here (``follow_state``)
   so the next round resumes after it.
4. Compare what serves: the primary's promoted and staged releases in the
   same state here, no other release promoted here, and the promoted
   release's tags pointing at the same digests. A difference (someone
   promoted or discarded here, or moved a tag) is reported as divergence:
   nothing is overwritten, the round is not "in sync".

The robot's secret is held in memory only: it is never logged, stored or
put into an error message. The primary's side (address, robot, JSON API) is
`bundles.follow_primary`. This module has no Flask: `web.cli_follow`, the
release API's ``GET /follower``, /readyz and /metrics (`status`) are its faces.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundles import format as fmt
from bundles.clusterdef import DefinitionError, parse_archive
from bundles.follow_primary import ContentGone, FollowError, Primary, PrimaryApi
from bundles.image_policy import unsigned_images
from bundles.importer import BundleRefused, PublishedImage, RepoPlan, publish
from bundles.registry_client import NotFound, PullError, RegistryClient
from bundles.releases import ReleaseError, ReleaseInfo, Releases
from registry.blobstore import BlobInfo, BlobStore, local_copy, require_space, storage_error
from registry.db import open_database, write_transaction
from registry.dbengine import Error as DatabaseError
from registry.digest import Descriptor, Digest
from registry.errors import RegistryError
from registry.gc import import_guard
from registry.image_trust import CONTENT_TRUST_COSIGN, ImageTrust
from registry.manifests import MANIFEST_TYPES, parse_manifest
from registry.paths import DataPaths

STALE_FACTOR = 3  # a follower whose last sync is older than this many intervals (plus a minute) is stale

Say = Callable[[str], None]


@dataclass(frozen=True)
class SyncReport:
    """What one round did and whether this appliance now matches the primary."""

    copied: list[dict[str, Any]]
    applied: list[dict[str, Any]]
    last_seq: int
    problems: list[str]

    @property
    def in_sync(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"copied": self.copied, "applied": self.applied, "lastSeq": self.last_seq, "inSync": self.in_sync,
                "problems": self.problems}


# -- the follow state kept here ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FollowState:
    """The ``follow_state`` row: whom this appliance follows and how far it got."""

    primary_url: str
    last_seq: int = 0
    primary_seq: int = 0
    last_sync_at: float | None = None
    last_attempt_at: float | None = None
    last_error: str | None = None
    interval_seconds: float | None = None

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        lag = now - self.last_sync_at if self.last_sync_at else None
        limit = STALE_FACTOR * (self.interval_seconds or 30) + 60
        return {"primary": self.primary_url, "lastSync": self.last_sync_at, "lastAttempt": self.last_attempt_at,
                "lagSeconds": round(lag, 1) if lag is not None else None, "lastEvent": self.last_seq,
                "eventsBehind": max(0, self.primary_seq - self.last_seq), "lastError": self.last_error,
                "stale": lag is None or lag > limit}


def status(paths: DataPaths) -> FollowState | None:
    """This appliance's follow state, None when it follows no primary."""
    row = open_database(paths).execute("SELECT primary_url, last_seq, primary_seq, last_sync_at, last_attempt_at, "
                              "last_error, interval_seconds FROM follow_state WHERE id = 1").fetchone()
    if row is None or not row[0]:
        return None
    url, last, primary_last, synced, attempted, error, interval = row
    return FollowState(url, int(last or 0), int(primary_last or 0), synced, attempted, error, interval)


# -- one round -----------------------------------------------------------------------------------------------


class Follower:
    """Keeps one data directory's releases in step with one primary."""

    def __init__(self, releases: Releases, primary: Primary, say: Say = lambda _: None,
                 interval_seconds: float | None = None, reserve_bytes: int = 256 << 20) -> None:
        self.releases = releases
        self.registry = releases.registry
        self.paths = releases.paths
        self.primary = primary
        self.say = say
        self.interval = interval_seconds
        self.reserve_bytes = reserve_bytes  # free space a copy must leave on the data volume (import_reserve_bytes)

    # -- state

    def _db(self) -> Any:
        return open_database(self.paths)

    def _state(self, new_primary: bool) -> FollowState:
        current = status(self.paths)
        if current is not None and current.primary_url != self.primary.base and not new_primary:
            raise FollowError(f"this appliance follows {current.primary_url}, not {self.primary.base}; to follow "
                              "another primary from its first event, run follow with --new-primary")
        with write_transaction(self._db()) as db:
            if current is None or current.primary_url != self.primary.base or new_primary:
                db.execute("DELETE FROM follow_releases")
                db.execute("DELETE FROM follow_state WHERE id = 1")  # a new primary: nothing of the old one's state
                db.execute("INSERT INTO follow_state (id, primary_url, last_seq, primary_seq) VALUES (1, ?, 0, 0)",
                           [self.primary.base])
            db.execute("UPDATE follow_state SET interval_seconds = ? WHERE id = 1", [self.interval])
        state = status(self.paths)
        assert state is not None
        return state

    def _mapping(self) -> dict[int, int]:
        return {int(p): int(loc) for p, loc in self._db().execute("SELECT primary_id, local_id FROM follow_releases")}

    def _note(self, **columns: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in columns)
        with write_transaction(self._db()) as db:
            db.execute(f"UPDATE follow_state SET {sets} WHERE id = 1", list(columns.values()))

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One follower at a time per data directory."""
        self.paths.imports.mkdir(parents=True, exist_ok=True)
        with (self.paths.imports / "follow.lock").open("w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise FollowError("another `cargohold follow` is running on this data directory") from None
            yield

    def sync(self, new_primary: bool = False) -> SyncReport:
        """One round (see the module docstring); raises FollowError, recording the error in the follow state."""
        with self._exclusive():
            state = self._state(new_primary)
            self._note(last_attempt_at=time.time())
            api = PrimaryApi(self.primary)
            client = RegistryClient(insecure=self.primary.base.startswith("http://"),
                                    credentials=lambda host: (self.primary.robot, self.primary.secret),
                                    ca_file=self.primary.ca_file)
            try:
                report = self._round(api, client, state)
            except FollowError as exc:
                self._note(last_error=str(exc))
                raise
            finally:
                api.close()
                client.close()
            self._note(last_sync_at=time.time(), last_error="; ".join(report.problems) or None)
            return report

    def _round(self, api: PrimaryApi, client: RegistryClient, state: FollowState) -> SyncReport:
        # Events first: every release an event names existed when it was read, so the list read after has it.
        events, primary_last = api.events(state.last_seq)
        listed = api.releases()
        if primary_last < state.last_seq:
            raise FollowError(f"the primary's release history ends at event {primary_last}, before event "
                              f"{state.last_seq} applied here: it is not the appliance this one followed (restored "
                              "from an older backup?); run follow with --new-primary to start over from it")
        self._note(primary_seq=primary_last)
        primary_states = {int(r["id"]): str(r["state"]) for r in listed}
        copied = []
        gone: set[int] = set()
        for release in listed:
            if release["state"] == "discarded":
                continue
            local = self._mapping().get(int(release["id"]))
            if local is not None and self._local_state(local) not in (None, "discarded"):
                continue
            try:
                copied.append(self._copy(api, client, int(release["id"])))
            except ContentGone as exc:
                if release["state"] not in ("superseded", "rolled-back"):
                    raise
                # An old release past the primary's retention: nothing can bring it back, and nothing needs it.
                self.say(f"{exc}; an old release ({release['state']}), skipped")
                gone.add(int(release["id"]))
        applied = []
        for event in events:
            outcome = self._apply(event, primary_states, gone)
            self._note(last_seq=int(event["seq"]))
            applied.append({**event, "outcome": outcome})
            self.say(f"event {event['seq']}: {_describe(event)}: {outcome}")
        problems = self._compare(api, listed, gone)
        return SyncReport(copied, applied, max(primary_last, state.last_seq), problems)

    def _local_state(self, local_id: int) -> str | None:
        row = self._db().execute("SELECT state FROM releases WHERE id = ?", [local_id]).fetchone()
        return str(row[0]) if row else None

    # -- copying one release

    def _copy(self, api: PrimaryApi, client: RegistryClient, release_id: int) -> dict[str, Any]:
        detail = api.release(release_id)
        what = f"release {release_id} ({detail.get('name')} {detail.get('version')})"
        started = time.monotonic()
        staging = self.paths.imports / "staging" / f"follow-{release_id}"
        with import_guard(self.paths), _Staging(staging) as stage:
            try:
                plans, fetched = self._fetch_images(client, detail, stage, what)
                self._check_content_trust(plans, stage, what)
                files, named, fetched_files = self._fetch_files(api, release_id, detail, stage)
                definitions = self._definitions(detail, named, stage, what)
                info = ReleaseInfo(str(detail["name"]), str(detail.get("version") or ""),
                                   str(detail.get("bundle") or f"{self.primary.base} release {release_id}"),
                                   detail.get("bundleDigest"), detail.get("keyId"), fetched + fetched_files)
                local_id = self._publish(plans, files, named, definitions, info, stage, release_id)
            except NotFound as exc:
                raise ContentGone(f"{what}: not copied, nothing of it was published (the primary no longer has all "
                                  f"of it): {exc}") from None
            except (PullError, RegistryError) as exc:
                message = exc.message if isinstance(exc, RegistryError) else str(exc)
                raise FollowError(f"{what}: not copied, nothing of it was published: {message}") from None
            except BundleRefused as exc:
                raise FollowError(f"{what}: not copied, nothing of it was published: {exc.message}") from None
            except OSError as exc:  # the data volume: full, read-only, failing
                raise FollowError(f"{what}: not copied, nothing of it was published: "
                                  f"{storage_error(exc, 'a blob').message}") from None
            except (KeyError, TypeError, ValueError) as exc:
                raise FollowError(f"{what}: not copied: the primary described it in an unexpected shape ({exc!r})") \
                    from None
        images = sum(len(p.images) for p in plans.values())
        self.say(f"{what}: copied as local release {local_id}: {images} image(s), {len(named)} file(s), "
                 f"{fetched + fetched_files} bytes fetched in {time.monotonic() - started:.1f} s")
        return {"primary": release_id, "local": local_id, "name": detail["name"], "version": detail.get("version"),
                "images": images, "files": len(named), "bytesFetched": fetched + fetched_files}

    def _fetch_images(self, client: RegistryClient, detail: dict[str, Any], stage: _Staging,
                      what: str) -> tuple[dict[str, RepoPlan], int]:
        """Manifests first (small, verified), then, once the disk is known to hold them, the blobs not here."""
        plans: dict[str, RepoPlan] = {}
        wanted: dict[Digest, tuple[str, Descriptor]] = {}  # blob -> (a repository to fetch it from, descriptor)
        fetched = 0

        def walk(repository: str, digest: Digest, media_type: str, plan: RepoPlan) -> None:
            nonlocal fetched
            if digest in plan.manifests:
                return
            body, served_type = client.manifest(self.primary.host, repository, str(digest))  # verified
            media_type = media_type if media_type in MANIFEST_TYPES else served_type
            parsed = parse_manifest(body, media_type, digest)
            if not self._have(digest, stage):
                stage.put_bytes(digest, body)
                fetched += len(body)
            for child in parsed.manifests:  # every platform of an index
                walk(repository, child.digest, child.media_type, plan)
            for blob in parsed.required_blobs:
                have = self._size(blob.digest, stage)
                if have is None:
                    wanted.setdefault(blob.digest, (repository, blob))
                elif have != blob.size:
                    raise FollowError(f"{what}: blob {blob.digest} has {have} bytes here, manifest {digest} says "
                                      f"{blob.size}")
                plan.blobs[blob.digest] = blob.size
            plan.manifests[digest] = (parsed, BlobInfo(digest, len(body)))
            plan.manifest_order.append(digest)

        for image in detail["images"]:
            repository, digest = str(image["repository"]), Digest.parse(str(image["digest"]))
            plan = plans.setdefault(repository, RepoPlan())
            walk(repository, digest, str(image.get("mediaType") or ""), plan)
            tag = image.get("tag")
            if tag:
                plan.tags[str(tag)] = digest
            plan.images.append(PublishedImage(str(image["reference"]), repository, tag, digest))
            # Signatures and other referrers travel with their subject, as in a bundle (untagged).
            for referrer in client.referrers(self.primary.host, repository, digest) or []:
                walk(repository, referrer.digest, referrer.media_type, plan)
        files = sum(int(f["size"]) for f in detail.get("files", []))
        require_space(self.paths.root, sum(d.size for _, d in wanted.values()) + files, self.reserve_bytes,
                      f"{what}: its new content")
        for repository, blob in wanted.values():
            client.fetch_blob(self.primary.host, repository, blob, stage.tmp(blob.digest))  # verified
            stage.commit(blob.digest)
            fetched += blob.size
        return plans, fetched

    def _check_content_trust(self, plans: dict[str, RepoPlan], stage: _Staging, what: str) -> None:
        """Refuse, as an import does, images that a content-trust project here would not serve."""
        findings = unsigned_images(ImageTrust(self.registry), plans, lambda d: self._locate(d, stage),
                                   self.registry.max_manifest_bytes)
        if findings:
            raise FollowError(f"{what}: not copied, nothing of it was published: a project here enables "
                              f"{CONTENT_TRUST_COSIGN} and these images carry no valid cosign signature by a key "
                              "trusted here: " + "; ".join(map(str, findings)))

    def _fetch_files(self, api: PrimaryApi, release_id: int, detail: dict[str, Any],
                     stage: _Staging) -> tuple[list[BlobInfo], list[tuple[str, str, int]], int]:
        files, named, fetched = [], [], 0
        for f in detail.get("files", []):
            digest, size = Digest.parse(str(f["digest"])), int(f["size"])
            have = self._size(digest, stage)
            if have is None:
                api.fetch_file(release_id, digest, size, stage.tmp(digest))
                stage.commit(digest)
                fetched += size
            elif have != size:
                raise FollowError(f"release {release_id}: file {f['path']} has {have} bytes here, the primary says "
                                  f"{size}")
            files.append(BlobInfo(digest, size))
            named.append((str(f["path"]), str(digest), size))
        return files, named, fetched

    def _definitions(self, detail: dict[str, Any], named: list[tuple[str, str, int]], stage: _Staging,
                     what: str) -> list[Any]:
        """The release's cluster definitions, parsed from its archives as the import parsed them."""
        out = []
        for path, digest, _ in sorted(named):
            if not path.startswith(fmt.CLUSTERDEF_PREFIX):
                continue
            located = self._locate(Digest.parse(digest), stage)
            assert located is not None
            try:
                out.append(parse_archive(located, source=f"bundle member {path}"))
            except DefinitionError as exc:
                raise FollowError(f"{what}: cluster definition {path}: {exc}") from None
        want = sorted((str(d["name"]), str(d.get("digest"))) for d in detail.get("clusterDefinitions", []))
        got = sorted((d.name, d.digest) for d in out)
        if want != got:
            raise FollowError(f"{what}: not copied, nothing of it was published: the primary lists cluster "
                              f"definitions {want}, its archives hold {got}")
        return out

    def _publish(self, plans: dict[str, RepoPlan], files: list[BlobInfo], named: list[tuple[str, str, int]],
                 definitions: list[Any], info: ReleaseInfo, stage: _Staging, release_id: int) -> int:
        """Move the staged blobs into the store, then publish and map the release in one transaction."""
        store = self.registry.store
        adopted: list[Digest] = []
        try:
            for digest, path in stage.staged():
                if store.stat(digest) is not None:
                    path.unlink()
                    continue
                store.adopt(path, digest, path.stat().st_size)
                adopted.append(digest)
            with write_transaction(self.registry.db) as db:
                summary = publish(self.registry, plans, files, definitions, self.paths, info, named)
                assert summary is not None
                db.execute("INSERT INTO follow_releases (primary_id, local_id, copied_at) VALUES (?, ?, ?) "
                           "ON CONFLICT (primary_id) DO UPDATE SET local_id = excluded.local_id, "
                           "copied_at = excluded.copied_at", [release_id, summary["id"], time.time()])
        except DatabaseError as exc:
            for digest in adopted:
                store.delete(digest)
            raise FollowError(f"release {release_id}: publishing failed, nothing was published: database error "
                              f"({exc})") from None
        except BaseException:
            for digest in adopted:
                store.delete(digest)
            raise
        return int(summary["id"])

    def _locate(self, digest: Digest, stage: _Staging) -> Path | None:
        if stage.has(digest):
            return stage.path(digest)
        store = self.registry.store
        path = store.local_path(digest)
        if path is None and store.stat(digest) is not None:
            # An object store: content an earlier release brought is read from a local copy in the staging.
            return stage.fetched(digest, store)
        return path

    def _have(self, digest: Digest, stage: _Staging) -> bool:
        return stage.has(digest) or self.registry.store.stat(digest) is not None

    def _size(self, digest: Digest, stage: _Staging) -> int | None:
        if stage.has(digest):
            return stage.path(digest).stat().st_size
        found = self.registry.store.stat(digest)
        return found.size if found is not None else None

    # -- events

    def _apply(self, event: dict[str, Any], primary_states: dict[int, str], gone: set[int]) -> str:
        """Apply one event of the primary here; returns what happened. Raises FollowError if it cannot be."""
        mapping = self._mapping()
        action, release_id = str(event.get("action")), int(event["release"])
        local = mapping.get(release_id)
        who = f"{event.get('by') or 'unknown'} (on {self.primary.base})"
        if local is None or self._local_state(local) is None:
            if primary_states.get(release_id) == "discarded":
                return "skipped: the release was discarded on the primary before it was copied here"
            if release_id in gone:
                return "skipped: the release's content is no longer on the primary"
            where = "here" if release_id in primary_states else "here, nor in the primary's release list"
            raise FollowError(f"event {event['seq']} ({_describe(event)}): release {release_id} is not {where}")
        state = self._local_state(local)
        try:
            if action == "promote":
                if state == "promoted":
                    return f"already in effect (local release {local} is promoted)"
                self.releases.promote(local, who, "follow", bool(event.get("forced")), event.get("reason"),
                                      followed=self.primary.base)
                return f"local release {local} promoted"
            if action == "rollback":
                if state == "promoted":
                    return f"already in effect (local release {local} is promoted)"
                source = mapping.get(int(event.get("rolledBack") or 0))
                current = self.releases.promoted()
                if current is not None and source is None and int(event.get("rolledBack") or 0) in gone:
                    # The release rolled back never came here: promoting the target is the same end state.
                    self.releases.promote(local, who, "follow", followed=self.primary.base)
                    return f"local release {local} promoted (the release rolled back is not here)"
                if current is None or current.id != source or current.previous_id != local:
                    here = f"release {current.id}" if current else "no release"
                    raise FollowError(f"event {event['seq']} ({_describe(event)}): local state diverged from the "
                                      f"primary: {here} is promoted here, not local release {source} with local "
                                      f"release {local} before it")
                self.releases.rollback(who, "follow")
                return f"local release {source} rolled back to local release {local}"
            if action == "discard":
                if state == "discarded":
                    return f"already in effect (local release {local} is discarded)"
                self.releases.discard(local, who, "follow", event.get("reason"))
                return f"local release {local} discarded"
        except ReleaseError as exc:
            raise FollowError(f"event {event['seq']} ({_describe(event)}) refused here: {exc.message}") from None
        raise FollowError(f"event {event['seq']}: unknown action {action!r} (a newer primary?)")

    # -- comparing

    def _compare(self, api: PrimaryApi, listed: list[dict[str, Any]], gone: set[int]) -> list[str]:
        """Differences between the primary's releases and this appliance's (divergence: reported, never undone).

        What serves matters: which release is promoted, which wait staged, and the promoted release's tags.
        Older releases may differ in name only (superseded or rolled back) when one was skipped as gone.
        """
        mapping = self._mapping()
        local_of = {loc: pid for pid, loc in mapping.items()}
        problems = []
        for release in listed:
            local = mapping.get(int(release["id"]))
            here = self._local_state(local) if local is not None else None
            old = release["state"] in ("discarded", "superseded", "rolled-back") and here != "promoted"
            if int(release["id"]) in gone or old:
                continue
            if here != release["state"]:
                problems.append(f"release {release['id']} ({release['name']} {release['version']}) is "
                                f"{release['state']} on the primary, {here or 'missing'} here"
                                + (f" (local release {local})" if local is not None else ""))
        current = self.releases.promoted()
        if current is not None and current.id not in local_of:
            problems.append(f"local release {current.id} ({current.name} {current.version}) is promoted here and "
                            "does not come from the primary")
        promoted = next((r for r in listed if r["state"] == "promoted"), None)
        if promoted is not None:
            detail = api.release(int(promoted["id"]))
            db = self._db()
            for image in detail["images"]:
                if image.get("pending") or not image.get("tag"):
                    continue
                row = db.execute("SELECT t.digest FROM tags t JOIN repositories r ON r.id = t.repository_id WHERE "
                                 "r.name = ? AND t.name = ?", [image["repository"], image["tag"]]).fetchone()
                if row is None or row[0] != image["digest"]:
                    problems.append(f"tag {image['repository']}:{image['tag']} points at "
                                    f"{row[0] if row else 'nothing'} here, {image['digest']} on the primary")
        return problems


def _describe(event: dict[str, Any]) -> str:
    action, release = event.get("action"), event.get("release")
    if action == "rollback":
        return f"roll back release {event.get('rolledBack')} to release {release}"
    forced = f" (forced: {event.get('reason')})" if event.get("forced") and action == "promote" else ""
    return f"{action} release {release}{forced}"


class _Staging:
    """``imports/staging/follow-<release>/``: verified blobs of one release being copied, and a lock.

    The lock (flock on ``lock``) tells the leftovers sweep (`web.leftovers`)
    that the directory is in use. A file at ``sha256/<hex>`` holds exactly
    those bytes: it is renamed there only after it was verified.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def __enter__(self) -> _Staging:
        shutil.rmtree(self.root, ignore_errors=True)  # a previous attempt's leftovers: fetched again
        (self.root / "tmp").mkdir(parents=True)
        self._lock = (self.root / "lock").open("w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # the leftovers sweep is looking at it this very moment
            self._lock.close()
            raise FollowError(f"staging directory {self.root.name} is busy; the next round tries again") from None
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self._lock.close()

    def path(self, digest: Digest) -> Path:
        return self.root / digest.algorithm / digest.encoded

    def tmp(self, digest: Digest) -> Path:
        return self.root / "tmp" / f"{digest.algorithm}-{digest.encoded}"

    def has(self, digest: Digest) -> bool:
        return self.path(digest).is_file()

    def fetched(self, digest: Digest, store: BlobStore) -> Path:
        """A local copy, for reading, of a blob in a store with no local files; `staged` never lists it."""
        return local_copy(store, digest, self.root / "fetched" / digest.algorithm / digest.encoded)

    def commit(self, digest: Digest) -> None:
        """Move a verified temporary file into place."""
        final = self.path(digest)
        final.parent.mkdir(exist_ok=True)
        os.replace(self.tmp(digest), final)

    def put_bytes(self, digest: Digest, body: bytes) -> None:
        """Stage a small verified body (a manifest)."""
        self.tmp(digest).write_bytes(body)
        self.commit(digest)

    def staged(self) -> Iterator[tuple[Digest, Path]]:
        for algorithm in ("sha256", "sha512"):
            d = self.root / algorithm
            if d.is_dir():
                for f in sorted(d.iterdir()):
                    yield Digest(algorithm, f.name), f

