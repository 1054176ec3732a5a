"""Repository names, tags and image references, and how they nest.

Images keep their full original reference nested under a Harbor project
(DESIGN.md, Names): ``docker.io/library/nginx:1.25`` is served as the
repository ``spectro-images/docker.io/library/nginx`` with tag ``1.25``.
containerd mirror requests (``?ns=docker.io`` on ``library/nginx``) resolve
to that same repository.

A registry host with a port cannot be a path component as it is (':' is not
in the OCI name grammar), so the host component nests through `nest_domain`:
``host:port`` becomes ``host_port`` (``myreg.local:5000/team/app`` is served as
``spectro-images/myreg.local_5000/team/app``). Host names never contain '_'
(DNS), so the encoding is injective and `unnest_domain` reverses it. Every
place that builds or takes apart ``<project>/<host>/...`` goes through this pair.
IPv6 literal hosts (``[::1]:5000``) are refused with NAME_INVALID.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from registry.digest import Digest
from registry.errors import RegistryError

# The distribution spec's <name> grammar, one path component at a time.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*\Z")  # \Z: "$" would let a trailing newline in
TAG_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}\Z")
MAX_NAME_LENGTH = 255

DEFAULT_DOMAIN = "docker.io"
_DOCKER_ALIASES = {"index.docker.io", "registry-1.docker.io", "docker.io"}


def validate_name(name: str) -> str:
    """Return `name` if it is a valid repository name; else raise NAME_INVALID."""
    if not name or len(name) > MAX_NAME_LENGTH or not NAME_RE.match(name):
        raise RegistryError(
            "NAME_INVALID",
            f"invalid repository name {name!r}: lowercase components of [a-z0-9._-] separated by '/', "
            f"at most {MAX_NAME_LENGTH} characters",
        )
    return name


def validate_tag(tag: str) -> str:
    """Return `tag` if it is a valid tag; else raise TAG_INVALID."""
    if not TAG_RE.match(tag or ""):
        raise RegistryError("TAG_INVALID",
                            f"invalid tag {tag!r}: at most 128 of [A-Za-z0-9_.-], not starting with '.' or '-'")
    return tag


def is_digest_reference(reference: str) -> bool:
    """True if a manifest reference names a digest rather than a tag."""
    return ":" in reference


def is_manifest_reference(reference: str) -> bool:
    """True if `reference` is a valid tag or a digest this registry can hold; never raises."""
    if not is_digest_reference(reference):
        return TAG_RE.match(reference) is not None
    try:
        Digest.parse(reference)
    except RegistryError:
        return False
    return True


def normalize_domain(domain: str) -> str:
    """Canonical registry host: Docker Hub's aliases become ``docker.io``."""
    domain = domain.lower()
    return DEFAULT_DOMAIN if domain in _DOCKER_ALIASES else domain


_PORT_RE = re.compile(r"^[0-9]{1,5}\Z")
_COMPONENT_RE = re.compile(rf"^{_COMPONENT}\Z")


def nest_domain(domain: str) -> str:
    """The path component that registry host `domain` nests as: ``host:port`` -> ``host_port``.

    Injective because host names never contain '_'. Raises
    RegistryError(NAME_INVALID) for a host that cannot be nested: an IPv6
    literal, a '_' in the host, a port that is not 1-5 digits, or characters
    outside the OCI name grammar.
    """
    def refuse(why: str) -> RegistryError:
        return RegistryError("NAME_INVALID", f"registry host {domain!r} cannot be nested in a repository name: {why}")

    if domain.startswith("["):
        raise refuse("IPv6 literal hosts are not supported; use a DNS name or an IPv4 address")
    if "_" in domain:
        raise refuse("a host name cannot contain '_'")
    host, sep, port = domain.rpartition(":")
    if not sep:
        host = domain
    elif ":" in host:
        raise refuse("IPv6 literal hosts are not supported; use a DNS name or an IPv4 address")
    elif not _PORT_RE.match(port):
        raise refuse(f"port {port!r} is not a number")
    if not _COMPONENT_RE.match(host):
        raise refuse("lowercase letters, digits, '.' and '-' only, beginning and ending with a letter or digit")
    return f"{host}_{port}" if sep else host


def unnest_domain(component: str) -> str:
    """The registry host that `component` is the nesting of (the inverse of `nest_domain`).

    Raises RegistryError(NAME_INVALID) if no host nests as `component`.
    """
    host, sep, port = component.rpartition("_")
    domain = f"{host}:{port}" if sep else component
    try:
        if nest_domain(domain) == component:
            return domain
    except RegistryError:
        pass
    raise RegistryError("NAME_INVALID", f"{component!r} is not a nested registry host")


def looks_like_host(domain: str) -> bool:
    """Docker's rule for a first path component that names a registry: a '.', a port, or localhost."""
    return "." in domain or ":" in domain or domain == "localhost"


def split_local_repository(project: str, name: str) -> tuple[str, str] | None:
    """``(host, path)`` for a repository ``<project>/<nested host>/<path>``, or None.

    None when `name` is outside `project` or its first component below it
    nests no registry host (a local project's own repository such as
    ``<project>/team/app``).
    """
    prefix = f"{project}/"
    if not name.startswith(prefix):
        return None
    component, _, path = name[len(prefix):].partition("/")
    if not path:
        return None
    try:
        domain = unnest_domain(component)
    except RegistryError:
        return None
    return (domain, path) if looks_like_host(domain) else None


def mirror_repository(project: str, ns: str, name: str) -> str:
    """The local repository for a containerd mirror request ``name?ns=host``.

    A name already nested as ``<project>/<nested host>/...`` is kept:
    containerd adds ``ns`` even when hosts.toml (override_path) or a k3s
    rewrite already put the project path in the request. Only Docker Hub
    gets ``library/`` before a one-component name. Raises
    RegistryError(NAME_INVALID) for an `ns` that cannot be nested.
    """
    domain = normalize_domain(ns)
    nested = nest_domain(domain)
    if name.startswith(f"{project}/{nested}/"):
        return name
    if domain == DEFAULT_DOMAIN and "/" not in name:
        name = f"library/{name}"
    return f"{project}/{nested}/{name}"


@dataclass(frozen=True)
class ImageReference:
    """A normalised image reference: domain, path, and a tag and/or digest."""

    domain: str
    path: str
    tag: str | None = None
    digest: Digest | None = None

    @classmethod
    def parse(cls, text: str) -> ImageReference:
        """Parse ``[domain/]path[:tag][@digest]`` with Docker's defaults.

        A missing domain is docker.io, a one-component Docker Hub path gets
        ``library/``, and a reference with neither tag nor digest gets
        ``latest``. Raises RegistryError(NAME_INVALID/TAG_INVALID/DIGEST_INVALID).
        """
        original = text
        text = text.strip()
        digest: Digest | None = None
        if "@" in text:
            text, _, digest_text = text.partition("@")
            digest = Digest.parse(digest_text)
        tag: str | None = None
        last_slash = text.rfind("/")
        colon = text.rfind(":")
        if colon > last_slash:
            text, tag = text[:colon], text[colon + 1 :]
            validate_tag(tag)
        first, _, rest = text.partition("/")
        if rest and (looks_like_host(first) or first != first.lower()):
            domain, path = normalize_domain(first), rest
            try:
                nest_domain(domain)  # a reference the appliance could never store is refused here, first
            except RegistryError as exc:
                raise RegistryError("NAME_INVALID", f"invalid image reference {original!r}: {exc.message}") from None
        else:
            domain, path = DEFAULT_DOMAIN, text
        if domain == DEFAULT_DOMAIN and "/" not in path:
            path = f"library/{path}"
        try:
            validate_name(path)
        except RegistryError as exc:
            raise RegistryError("NAME_INVALID", f"invalid image reference {original!r}: {exc.message}") from None
        if tag is None and digest is None:
            tag = "latest"
        return cls(domain, path, tag, digest)

    @property
    def repository(self) -> str:
        """``domain/path``: the full original repository."""
        return f"{self.domain}/{self.path}"

    def local_repository(self, project: str) -> str:
        """The repository this image is served from under `project` (its host nested by `nest_domain`)."""
        return f"{project}/{nest_domain(self.domain)}/{self.path}"

    def __str__(self) -> str:
        out = self.repository
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


@dataclass(frozen=True)
class MappingRule:
    """Replace a matched reference prefix (``domain/path...``), keeping the rest of the path.

    ``MappingRule("gcr.io/spectro-images-public", "docker.io/spectro")`` maps
    ``gcr.io/spectro-images-public/kube-vip`` to ``docker.io/spectro/kube-vip``.
    A prefix matches whole path components only.
    """

    prefix: str
    replacement: str

    def apply(self, repository: str) -> str | None:
        """`repository` with the prefix replaced, or None if the rule does not match."""
        prefix = self.prefix.strip("/")
        if repository == prefix:
            return self.replacement.strip("/")
        if repository.startswith(prefix + "/"):
            return f"{self.replacement.strip('/')}/{repository[len(prefix) + 1:]}".strip("/")
        return None


def parse_mapping_rules(text: str) -> tuple[MappingRule, ...]:
    """Rules from ``prefix=replacement,prefix=replacement`` (CARGOHOLD_MAPPING_RULES).

    Raises ValueError naming the malformed entry.
    """
    rules = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        prefix, sep, replacement = entry.partition("=")
        if not sep or not prefix.strip("/ ") or not replacement.strip("/ "):
            raise ValueError(f"invalid mapping rule {entry!r}: expected prefix=replacement")
        rules.append(MappingRule(prefix.strip(), replacement.strip()))
    return tuple(rules)


def map_reference(ref: ImageReference, rules: tuple[MappingRule, ...] | list[MappingRule], project: str) -> str:
    """The local repository serving `ref`: the first matching rule applied, then nested under `project`.

    Rules match and replace the original form (``myreg.local:5000/team``);
    the resulting first component is then nested by `nest_domain`. Raises
    RegistryError(NAME_INVALID) when the result is not a valid repository name.
    """
    repository = ref.repository
    for rule in rules:
        mapped = rule.apply(repository)
        if mapped is not None:
            repository = mapped
            break
    first, sep, rest = repository.partition("/")
    try:
        name = f"{project}/{nest_domain(first)}{sep}{rest}"
        return validate_name(name)
    except RegistryError as exc:
        raise RegistryError("NAME_INVALID", f"image {ref} maps to {repository!r}, which cannot be served: "
                            f"{exc.message}") from None
