"""Cluster definitions: the archive format, its validation, and the store.

A cluster definition is a ``.tgz`` holding a top-level ``definition.yaml``
(or ``.yml``/``.json``) that names one or more cluster profiles; each
profile lists its packs (name, version, type, layer, values, manifests,
charts, ``content.images[].image``) and its variables (name, default,
required, format). docs/cluster-definition-format.md is the prose
description of this module.

Rules enforced on import: at most one infrastructure profile, and no pack
in two profiles. The archive is read as a stream, member by member, and
refused on the first absolute path, ``..``, link, device, oversized member
or when its total grows past a cap, so a hostile archive costs at most the
caps in memory. Images are discovered (`bundles.discovery`) at import and
stored with the definition, so a check never parses manifests again.

A definition may carry a signed envelope (two top-level members,
`ENVELOPE_MEMBERS`); parsing leaves them out, and `bundles.clusterdef_trust`
checks them: a standalone definition is only stored through its
`import_archive`, which verifies the signature first.

`ClusterDefinitions` keeps definitions (by name; importing a name again
replaces it) and the history of checks in SQLite.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import tarfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from bundles.discovery import (
    DiscoveryError,
    Found,
    chart_reference,
    load_yaml,
    manifest_images,
    normalise,
    values_images,
)
from bundles.tarheaders import BoundedTarInfo
from registry.db import migrate, open_database, write_transaction
from registry.dbengine import insert_id
from registry.paths import DataPaths

API_VERSION = "cargohold.io/v1"
KIND = "ClusterDefinition"
DEFINITION_FILES = ("definition.yaml", "definition.yml", "definition.json")
PROFILE_TYPES = ("infra", "add-on", "system", "app")
INFRA = "infra"
DEFAULT_ARCHITECTURES = ("amd64",)

# The signed envelope (bundles.clusterdef_trust): a list of every other member's digest, and a signature over it.
ENVELOPE_MANIFEST = "cargohold-definition.json"
ENVELOPE_SIGNATURE = "cargohold-definition.sig"
ENVELOPE_MEMBERS = (ENVELOPE_MANIFEST, ENVELOPE_SIGNATURE)

MAX_ARCHIVE_BYTES = 64 << 20  # compressed
MAX_MEMBER_BYTES = 16 << 20
MAX_TOTAL_BYTES = 64 << 20  # uncompressed, all members together: held in memory while parsing
MAX_MEMBERS = 10_000

_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,126}[a-z0-9])?$")
_VAR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")


class DefinitionError(ValueError):
    """A cluster definition that cannot be imported; the message names the file and the field."""


class DefinitionNotFound(KeyError):
    """No cluster definition of that name."""

    def __str__(self) -> str:
        return f"no cluster definition named {self.args[0]!r}"


# -- the model ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variable:
    """A profile variable: required ones without a default must be given when the cluster is formed."""

    name: str
    default: str | None = None
    required: bool = False
    format: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "default": self.default, "required": self.required, "format": self.format}


@dataclass(frozen=True)
class ChartRef:
    """A Helm chart a pack installs: ``repository`` is ``oci://host/path`` or a classic HTTP repository."""

    name: str
    version: str
    repository: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "repository": self.repository}


@dataclass(frozen=True)
class FileRef:
    """A file a pack needs (``content.files[]``): its name, the sha256 of its bytes, optionally its size."""

    name: str
    digest: str
    size: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "digest": self.digest}
        if self.size is not None:
            out["size"] = self.size
        return out


@dataclass(frozen=True)
class Document:
    """A file the definition carries (a values file or a manifest): its archive path and text."""

    path: str
    text: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "text": self.text}


@dataclass(frozen=True)
class Pack:
    """A pack of a profile."""

    name: str
    version: str
    type: str = "spectro"
    layer: str | None = None
    values: Document | None = None
    manifests: tuple[Document, ...] = ()
    charts: tuple[ChartRef, ...] = ()
    images: tuple[str, ...] = ()  # pack.content.images[].image, as written
    files: tuple[FileRef, ...] = ()  # pack.content.files[]

    def to_json(self) -> dict[str, Any]:
        content: dict[str, Any] = {"images": [{"image": i} for i in self.images]}
        if self.files:
            content["files"] = [f.to_json() for f in self.files]
        return {"name": self.name, "version": self.version, "type": self.type, "layer": self.layer,
                "values": self.values.to_json() if self.values else None,
                "manifests": [m.to_json() for m in self.manifests], "charts": [c.to_json() for c in self.charts],
                "content": content}


@dataclass(frozen=True)
class Profile:
    """A cluster profile: its type, packs and variables."""

    name: str
    version: str
    type: str
    packs: tuple[Pack, ...] = ()
    variables: tuple[Variable, ...] = ()
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "type": self.type, "source": self.source,
                "packs": [p.to_json() for p in self.packs], "variables": [v.to_json() for v in self.variables]}


@dataclass(frozen=True)
class RequiredImage:
    """An image (or OCI chart) the cluster needs, normalised, with every place that asks for it."""

    reference: str
    sources: tuple[str, ...]
    kind: str = "image"
    # Set for what the appliance itself publishes (a chart from a .tgz): the repository under the project,
    # which a reference's registry-host nesting cannot name.
    repository: str = ""

    def to_json(self) -> dict[str, Any]:
        out = {"reference": self.reference, "kind": self.kind, "sources": list(self.sources)}
        if self.repository:
            out["repository"] = self.repository
        return out


@dataclass(frozen=True)
class RequiredFile:
    """A file the cluster needs (bundles.artifacts file artifacts), by name and sha256, with who asks for it."""

    name: str
    digest: str
    size: int | None
    sources: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "digest": self.digest, "size": self.size, "sources": list(self.sources)}


@dataclass(frozen=True)
class ClusterDefinition:
    """A parsed, validated cluster definition with the images it needs."""

    name: str
    version: str
    architectures: tuple[str, ...]
    profiles: tuple[Profile, ...]
    images: tuple[RequiredImage, ...] = ()
    warnings: tuple[str, ...] = ()
    digest: str = ""  # sha256 of the archive
    source: str = ""
    imported_at: float = 0.0
    signed_by: str = ""  # id of the trusted key that signed a standalone definition ("" inside a bundle, or unsigned)
    files: tuple[RequiredFile, ...] = ()

    @property
    def required_variables(self) -> list[dict[str, Any]]:
        """Required variables that have no default: the values someone must supply."""
        return [{"profile": p.name, "name": v.name, "format": v.format}
                for p in self.profiles for v in p.variables if v.required and v.default is None]

    def to_json(self) -> dict[str, Any]:
        return {"apiVersion": API_VERSION, "kind": KIND, "name": self.name, "version": self.version,
                "architectures": list(self.architectures), "profiles": [p.to_json() for p in self.profiles],
                "images": [i.to_json() for i in self.images], "warnings": list(self.warnings),
                "digest": self.digest, "source": self.source, "importedAt": self.imported_at,
                "signedBy": self.signed_by or None, "files": [f.to_json() for f in self.files]}

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "architectures": list(self.architectures),
                "profiles": [{"name": p.name, "type": p.type, "packs": len(p.packs)} for p in self.profiles],
                "images": len(self.images), "files": len(self.files), "requiredVariables": self.required_variables,
                "warnings": list(self.warnings), "digest": self.digest, "source": self.source,
                "importedAt": self.imported_at, "signedBy": self.signed_by or None}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ClusterDefinition:
        """Rebuild a stored definition (written by `to_json`; trusted)."""
        def document(d: dict[str, Any] | None) -> Document | None:
            return Document(d["path"], d["text"]) if d else None

        profiles = tuple(Profile(
            p["name"], p["version"], p["type"],
            tuple(Pack(k["name"], k["version"], k["type"], k.get("layer"), document(k.get("values")),
                       tuple(Document(m["path"], m["text"]) for m in k.get("manifests", [])),
                       tuple(ChartRef(c["name"], c["version"], c["repository"]) for c in k.get("charts", [])),
                       tuple(i["image"] for i in k.get("content", {}).get("images", [])),
                       tuple(FileRef(f["name"], f["digest"], f.get("size"))
                             for f in k.get("content", {}).get("files", [])))
                  for k in p.get("packs", [])),
            tuple(Variable(v["name"], v.get("default"), bool(v.get("required")), v.get("format"))
                  for v in p.get("variables", [])),
            p.get("source", "")) for p in doc["profiles"])
        return cls(doc["name"], doc["version"], tuple(doc["architectures"]), profiles,
                   tuple(RequiredImage(i["reference"], tuple(i["sources"]), i.get("kind", "image"),
                                       i.get("repository", "")) for i in doc.get("images", [])),
                   tuple(doc.get("warnings", [])), doc.get("digest", ""), doc.get("source", ""),
                   float(doc.get("importedAt", 0.0)), doc.get("signedBy") or "",
                   tuple(RequiredFile(f["name"], f["digest"], f.get("size"), tuple(f["sources"]))
                         for f in doc.get("files", [])))


# -- reading the archive ----------------------------------------------------------------------


class _Counting:
    """A read-only stream that hashes what passes and refuses more than `limit` bytes."""

    def __init__(self, raw: IO[bytes], limit: int) -> None:
        self.raw, self.limit, self.read_bytes = raw, limit, 0
        self.sha256 = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n if n is not None and n >= 0 else 1 << 20)
        self.read_bytes += len(data)
        if self.read_bytes > self.limit:
            raise DefinitionError(f"archive is larger than the {self.limit}-byte limit for a cluster definition")
        self.sha256.update(data)
        return data


def read_members(stream: IO[bytes]) -> tuple[dict[str, bytes], str]:
    """The regular files of a .tgz (path -> bytes) and the archive's sha256, read as a stream.

    Raises DefinitionError for anything that is not a plain gzip tar of
    regular files within the caps.
    """
    counting = _Counting(stream, MAX_ARCHIVE_BYTES)
    members: dict[str, bytes] = {}
    total = count = 0
    try:
        with tarfile.open(fileobj=counting, mode="r|gz", tarinfo=BoundedTarInfo) as tar:  # type: ignore[call-overload]
            for member in tar:
                count += 1
                if count > MAX_MEMBERS:
                    raise DefinitionError(f"archive has more than {MAX_MEMBERS} members")
                name = _member_name(member.name)
                if member.isdir():
                    continue
                if not member.isreg():
                    what = ("a symbolic link" if member.issym() else "a hard link" if member.islnk()
                            else "a device or special file")
                    raise DefinitionError(f"archive member {member.name!r} is {what}; only regular files are allowed")
                if member.size > MAX_MEMBER_BYTES:
                    raise DefinitionError(f"archive member {member.name!r} is {member.size} bytes; "
                                          f"the limit is {MAX_MEMBER_BYTES}")
                total += member.size
                if total > MAX_TOTAL_BYTES:
                    raise DefinitionError(f"archive unpacks to more than {MAX_TOTAL_BYTES} bytes")
                if name in members:
                    raise DefinitionError(f"archive member {name!r} appears twice")
                f = tar.extractfile(member)
                members[name] = f.read() if f is not None else b""
        while counting.read(1 << 20):  # the digest covers the whole file, trailing padding included
            pass
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DefinitionError(f"not a readable gzip-compressed tar archive: {exc}") from None
    return members, counting.sha256.hexdigest()


def _member_name(raw: str) -> str:
    if raw.startswith("/") or "\\" in raw or "\x00" in raw:
        raise DefinitionError(f"archive member {raw!r} has an absolute or malformed path")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise DefinitionError(f"archive member {raw!r} leaves the archive (contains '..')")
    return "/".join(parts)


# -- parsing ------------------------------------------------------------------------------------


@dataclass
class _Archive:
    """Members of one archive under the definition's directory."""

    members: dict[str, bytes]
    root: str
    used: set[str] = field(default_factory=set)

    def text(self, path: str, where: str) -> tuple[str, str]:
        """(archive path, UTF-8 text) of a file named relative to the definition's directory."""
        if not isinstance(path, str) or not path.strip():
            raise DefinitionError(f"{where}: expected a file path in the archive, got {path!r}")
        if path.startswith("/") or ".." in path.split("/"):
            raise DefinitionError(f"{where}: path {path!r} must be relative and stay inside the archive")
        full = posixpath.normpath(posixpath.join(self.root, path)) if self.root else posixpath.normpath(path)
        if full not in self.members:
            raise DefinitionError(f"{where}: file {path!r} is not in the archive")
        try:
            return full, self.members[full].decode("utf-8")
        except UnicodeDecodeError:
            raise DefinitionError(f"{where}: file {path!r} is not UTF-8 text") from None

    def load(self, path: str, where: str) -> tuple[str, Any]:
        full, text = self.text(path, where)
        return full, _load(text, full)


def _load(text: str, where: str) -> Any:
    try:
        return json.loads(text) if where.endswith(".json") else load_yaml(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise DefinitionError(f"{where}: not valid {'JSON' if where.endswith('.json') else 'YAML'}: {exc}") from None


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DefinitionError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _list(doc: dict[str, Any], key: str, where: str) -> list[Any]:
    value = doc.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise DefinitionError(f"{where}: field '{key}' must be a list")
    return value


def _string(doc: dict[str, Any], key: str, where: str, required: bool = True, default: str | None = None) -> Any:
    value = doc.get(key)
    if value is None:
        if required:
            raise DefinitionError(f"{where}: field '{key}' is required")
        return default
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DefinitionError(f"{where}: field '{key}' must be a string")
    return str(value).strip()


def _name(doc: dict[str, Any], where: str) -> str:
    name = _string(doc, "name", where)
    if not _NAME_RE.match(name):
        raise DefinitionError(f"{where}: name {name!r} must be lowercase [a-z0-9._-], starting and ending "
                              "with a letter or digit, at most 128 characters")
    return str(name)


def parse_archive(archive: IO[bytes] | Path | str, source: str = "") -> ClusterDefinition:
    """Read, validate and discover the images of a cluster definition archive (nothing is stored).

    Raises DefinitionError naming the file and field at fault.
    """
    if isinstance(archive, (str, Path)):
        try:
            with Path(archive).open("rb") as f:
                members, digest = read_members(f)
        except OSError as exc:
            raise DefinitionError(f"cannot read {archive}: {exc.strerror}") from None
    else:
        members, digest = read_members(archive)
    return parse_members(members, digest, source)


def parse_members(members: dict[str, bytes], digest: str, source: str = "") -> ClusterDefinition:
    """Parse an archive already read into memory by `read_members` (a signed envelope is left out, unchecked)."""
    members = {k: v for k, v in members.items() if k not in ENVELOPE_MEMBERS}
    candidates = [m for m in members if posixpath.basename(m) in DEFINITION_FILES and m.count("/") <= 1]
    top = [m for m in candidates if "/" not in m] or candidates
    if not top:
        raise DefinitionError(f"archive has no {' / '.join(DEFINITION_FILES)} at its top level")
    if len(top) > 1:
        raise DefinitionError(f"archive has more than one definition document: {', '.join(sorted(top))}")
    def_path = top[0]
    archive = _Archive(members, posixpath.dirname(def_path))
    doc = _mapping(_load(members[def_path].decode("utf-8", errors="replace"), def_path), def_path)
    kind = doc.get("kind", KIND)
    if kind != KIND:
        raise DefinitionError(f"{def_path}: field 'kind' must be {KIND!r}, got {kind!r}")
    name = _name(doc, def_path)
    version = _string(doc, "version", def_path, required=False, default="")
    arches = tuple(str(a).strip() for a in _list(doc, "architectures", def_path)) or DEFAULT_ARCHITECTURES
    for a in arches:
        if not re.match(r"^[a-z0-9_]+(/[a-z0-9_]+)?$", a):
            raise DefinitionError(f"{def_path}: architecture {a!r} is not a Go architecture name such as amd64")
    profile_entries = _list(doc, "profiles", def_path)
    if not profile_entries:
        raise DefinitionError(f"{def_path}: field 'profiles' must list at least one profile")
    profiles = []
    for i, entry in enumerate(profile_entries):
        where = f"{def_path}: profiles[{i}]"
        if isinstance(entry, str):
            path, pdoc = archive.load(entry, where)
            profiles.append(_profile(_mapping(pdoc, path), path, archive))
        else:
            profiles.append(_profile(_mapping(entry, where), where, archive))
    _check_rules(profiles)
    images, warnings = _discover(profiles)
    return ClusterDefinition(name, version, arches, tuple(profiles), images, warnings, f"sha256:{digest}", source,
                             files=_required_files(profiles))


def _profile(doc: dict[str, Any], where: str, archive: _Archive) -> Profile:
    name = _name(doc, where)
    ptype = _string(doc, "type", where)
    if ptype not in PROFILE_TYPES:
        raise DefinitionError(f"{where}: profile type {ptype!r} must be one of {', '.join(PROFILE_TYPES)}")
    packs = []
    seen: set[str] = set()
    for i, entry in enumerate(_list(doc, "packs", where)):
        pack = _pack(_mapping(entry, f"{where}: packs[{i}]"), f"{where}: packs[{i}]", archive)
        if pack.name in seen:
            raise DefinitionError(f"{where}: pack {pack.name!r} appears twice in profile {name!r}")
        seen.add(pack.name)
        packs.append(pack)
    variables = []
    seen_vars: set[str] = set()
    for i, entry in enumerate(_list(doc, "variables", where)):
        vwhere = f"{where}: variables[{i}]"
        v = _mapping(entry, vwhere)
        vname = _string(v, "name", vwhere)
        if not _VAR_RE.match(vname):
            raise DefinitionError(f"{vwhere}: variable name {vname!r} must match {_VAR_RE.pattern}")
        if vname in seen_vars:
            raise DefinitionError(f"{vwhere}: variable {vname!r} is declared twice in profile {name!r}")
        seen_vars.add(vname)
        required = v.get("required", False)
        if not isinstance(required, bool):
            raise DefinitionError(f"{vwhere}: field 'required' must be true or false")
        default = v.get("default")
        if default is not None and (isinstance(default, (dict, list))):
            raise DefinitionError(f"{vwhere}: field 'default' must be a scalar")
        variables.append(Variable(vname, None if default is None else str(default), required,
                                  _string(v, "format", vwhere, required=False)))
    return Profile(name, _string(doc, "version", where, required=False, default=""), ptype, tuple(packs),
                   tuple(variables), where.split(":")[0])


def _pack(doc: dict[str, Any], where: str, archive: _Archive) -> Pack:
    name = _name(doc, where)
    where = f"{where} ({name})"
    values: Document | None = None
    raw_values = doc.get("values")
    if isinstance(raw_values, str):
        values = Document(*archive.text(raw_values, f"{where}: values"))
    elif isinstance(raw_values, dict):
        values = Document(f"{where}: values", yaml.safe_dump(raw_values, sort_keys=False))
    elif raw_values is not None:
        raise DefinitionError(f"{where}: field 'values' must be a file path or a mapping")
    manifests = tuple(Document(*archive.text(p, f"{where}: manifests[{i}]"))
                      for i, p in enumerate(_list(doc, "manifests", where)))
    charts = []
    for i, entry in enumerate(_list(doc, "charts", where)):
        cwhere = f"{where}: charts[{i}]"
        c = _mapping(entry, cwhere)
        if "reference" in c:
            charts.append(ChartRef("", "", _string(c, "reference", cwhere)))
        else:
            # No repository: a chart the appliance serves itself (a .tgz a bundle carried), <project>/<name>.
            charts.append(ChartRef(_string(c, "name", cwhere), _string(c, "version", cwhere),
                                   _string(c, "repository", cwhere, required=False, default="")))
    content = doc.get("content") or {}
    images = []
    for i, entry in enumerate(_list(_mapping(content, f"{where}: content"), "images", f"{where}: content")):
        iwhere = f"{where}: content.images[{i}]"
        images.append(_string(_mapping(entry, iwhere), "image", iwhere))
    files = tuple(_file_ref(_mapping(entry, f"{where}: content.files[{i}]"), f"{where}: content.files[{i}]")
                  for i, entry in enumerate(_list(_mapping(content, f"{where}: content"), "files",
                                                  f"{where}: content")))
    return Pack(name, _string(doc, "version", where), _string(doc, "type", where, required=False, default="spectro"),
                _string(doc, "layer", where, required=False), values, manifests, tuple(charts), tuple(images), files)


def _file_ref(doc: dict[str, Any], where: str) -> FileRef:
    from bundles.artifacts import ArtifactError, file_title

    name = _string(doc, "name", where)
    try:
        file_title(name)
    except ArtifactError as exc:
        raise DefinitionError(f"{where}: {exc}") from None
    digest = _string(doc, "digest", where)
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise DefinitionError(f"{where}: field 'digest' must be sha256:<64 lower-case hex digits>, got {digest!r}")
    size = doc.get("size")
    if isinstance(size, str) and size.isascii() and size.isdigit():
        size = int(size)  # definitions keep YAML numbers as written
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise DefinitionError(f"{where}: field 'size' must be a non-negative integer")
    return FileRef(name, digest, size)


def _check_rules(profiles: list[Profile]) -> None:
    infra = [p.name for p in profiles if p.type == INFRA]
    if len(infra) > 1:
        raise DefinitionError(f"at most one infrastructure profile is allowed; found {len(infra)}: "
                              f"{', '.join(infra)}")
    names: set[str] = set()
    for p in profiles:
        if p.name in names:
            raise DefinitionError(f"{p.source}: profile {p.name!r} appears twice")
        names.add(p.name)
    owner: dict[str, str] = {}
    for p in profiles:
        for pack in p.packs:
            if pack.name in owner:
                raise DefinitionError(f"pack {pack.name!r} is in two profiles: {owner[pack.name]!r} and {p.name!r}")
            owner[pack.name] = p.name


def _discover(profiles: list[Profile]) -> tuple[tuple[RequiredImage, ...], tuple[str, ...]]:
    found: list[Found] = []
    warnings: list[str] = []
    local: dict[tuple[str, str], list[str]] = {}  # charts the appliance serves itself: (name, version) -> sources
    try:
        for p in profiles:
            for pack in p.packs:
                where = f"profile {p.name}, pack {pack.name}"
                found += [Found(normalise(img, f"{where}: content.images[{i}]"), f"{where}: content.images")
                          for i, img in enumerate(pack.images)]
                for m in pack.manifests:
                    found += manifest_images(m.text, m.path)
                if pack.values is not None:
                    vfound, vwarn = values_images(pack.values.text, pack.values.path)
                    found += vfound
                    warnings += vwarn
                for c in pack.charts:
                    if not c.repository and c.name:
                        local.setdefault((c.name, c.version), []).append(f"{where}: chart {c.name}")
                        continue
                    ref = chart_reference(c.name, c.version, c.repository, f"{where}: chart {c.name or c.repository}")
                    if ref is None:
                        warnings.append(f"{where}: chart {c.name} {c.version} comes from the HTTP repository "
                                        f"{c.repository}; only OCI charts can be checked against the registry")
                    else:
                        found.append(ref)
    except DiscoveryError as exc:
        raise DefinitionError(str(exc)) from None
    merged: dict[str, tuple[str, list[str]]] = {}
    for f in found:
        _, sources = merged.setdefault(f.reference, (f.kind, []))
        if f.where not in sources:
            sources.append(f.where)
    required = [RequiredImage(ref, tuple(srcs), kind) for ref, (kind, srcs) in sorted(merged.items())]
    for (name, version), srcs in sorted(local.items()):
        from bundles.artifacts import ArtifactError, chart_repository, oci_tag

        try:
            repository, tag = chart_repository(name), oci_tag(version, f"chart {name}")
        except ArtifactError as exc:
            raise DefinitionError(f"{srcs[0]}: {exc}") from None
        required.append(RequiredImage(f"{repository}:{tag}", tuple(srcs), "chart", repository))
    return tuple(required), tuple(warnings)


def _required_files(profiles: list[Profile]) -> tuple[RequiredFile, ...]:
    """Every file the packs need, once per (name, digest), with the packs that ask for it."""
    merged: dict[tuple[str, str], tuple[int | None, list[str]]] = {}
    for p in profiles:
        for pack in p.packs:
            for f in pack.files:
                size, sources = merged.setdefault((f.name, f.digest), (f.size, []))
                if size is not None and f.size is not None and size != f.size:
                    raise DefinitionError(f"profile {p.name}, pack {pack.name}: file {f.name} {f.digest} is given "
                                          f"with two sizes ({size} and {f.size})")
                if size is None and f.size is not None:
                    merged[(f.name, f.digest)] = (f.size, sources)
                sources.append(f"profile {p.name}, pack {pack.name}: content.files")
    return tuple(RequiredFile(name, digest, size, tuple(srcs))
                 for (name, digest), (size, srcs) in sorted(merged.items()))


# -- the store ----------------------------------------------------------------------------------


class ClusterDefinitions:
    """Imported cluster definitions and their past checks, in the data directory's database."""

    def __init__(self, paths: DataPaths) -> None:
        import bundles.schema  # noqa: F401  (registers the tables)

        self.paths = paths
        migrate(paths)  # idempotent; covers callers that opened the database before bundles.schema was imported

    @property
    def db(self) -> Any:
        return open_database(self.paths)

    def put(self, definition: ClusterDefinition) -> ClusterDefinition:
        """Store a definition, replacing an earlier one of the same name; returns it as stored."""
        stored = ClusterDefinition(**{**definition.__dict__, "imported_at": time.time()})
        with write_transaction(self.db) as db:
            db.execute("INSERT INTO cluster_definitions (name, version, digest, source, document, imported_at) "
                       "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET version = excluded.version, "
                       "digest = excluded.digest, source = excluded.source, document = excluded.document, "
                       "imported_at = excluded.imported_at",
                       [stored.name, stored.version, stored.digest, stored.source, json.dumps(stored.to_json()),
                        stored.imported_at])
        return stored

    def get(self, name: str) -> ClusterDefinition:
        """The definition called `name`; raises DefinitionNotFound."""
        row = self.db.execute("SELECT document FROM cluster_definitions WHERE name = ?", [name]).fetchone()
        if row is None:
            raise DefinitionNotFound(name)
        return ClusterDefinition.from_json(json.loads(row[0]))

    def names(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM cluster_definitions ORDER BY name")]

    def all(self) -> Iterator[ClusterDefinition]:
        for name in self.names():
            try:
                yield self.get(name)
            except DefinitionNotFound:
                continue  # deleted meanwhile

    def delete(self, name: str) -> None:
        """Remove a definition and its check history; raises DefinitionNotFound."""
        with write_transaction(self.db) as db:
            cur = db.execute("DELETE FROM cluster_definitions WHERE name = ?", [name])
            if cur.rowcount == 0:
                raise DefinitionNotFound(name)
            db.execute("DELETE FROM cluster_definition_checks WHERE definition = ?", [name])

    def record_check(self, result: dict[str, Any]) -> int:
        """Keep a check result (as made by `bundles.check`); returns its id."""
        with write_transaction(self.db) as db:
            return insert_id(db, "INSERT INTO cluster_definition_checks (definition, definition_digest, "
                             "checked_at, ready, result) VALUES (?, ?, ?, ?, ?)",
                             [result["definition"], result.get("definitionDigest"), result["checkedAt"],
                              int(bool(result["ready"])), json.dumps(result)])

    def checks(self, name: str, limit: int = 100) -> list[dict[str, Any]]:
        """Summaries of past checks of `name`, newest first."""
        rows = self.db.execute("SELECT id, result FROM cluster_definition_checks WHERE definition = ? "
                               "ORDER BY checked_at DESC, id DESC LIMIT ?", [name, limit]).fetchall()
        out = []
        for check_id, text in rows:
            r = json.loads(text)
            out.append({"id": check_id, "checkedAt": r["checkedAt"], "ready": r["ready"], "counts": r["counts"],
                        "bytes": r["bytes"], "definitionDigest": r.get("definitionDigest")})
        return out

    def check(self, name: str, check_id: int) -> dict[str, Any]:
        """One past check in full; raises DefinitionNotFound if there is no such check of `name`."""
        row = self.db.execute("SELECT id, result FROM cluster_definition_checks WHERE definition = ? AND id = ?",
                              [name, check_id]).fetchone()
        if row is None:
            raise DefinitionNotFound(f"{name} check {check_id}")
        return {"id": row[0], **json.loads(row[1])}
