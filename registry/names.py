"""Repository names, tags and image references, and how they nest.

Images keep their full original reference nested under a Harbor project
(DESIGN.md, Names): ``docker.io/library/nginx:1.25`` is served as the
repository ``spectro-images/docker.io/library/nginx`` with tag ``1.25``.
containerd mirror requests (``?ns=docker.io`` on ``library/nginx``) resolve
to that same repository.
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


def normalize_domain(domain: str) -> str:
    """Canonical registry host: Docker Hub's aliases become ``docker.io``."""
    domain = domain.lower()
    return DEFAULT_DOMAIN if domain in _DOCKER_ALIASES else domain


def mirror_repository(project: str, ns: str, name: str) -> str:
    """The local repository for a containerd mirror request ``name?ns=host``.

    A name already nested as ``<project>/<host>/...`` is kept: containerd adds
    ``ns`` even when hosts.toml (override_path) or a k3s rewrite already put
    the project path in the request.
    """
    domain = normalize_domain(ns)
    if name.startswith(f"{project}/{domain}/"):
        return name
    if domain == DEFAULT_DOMAIN and "/" not in name:
        name = f"library/{name}"
    return f"{project}/{domain}/{name}"


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
        if rest and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
            domain, path = normalize_domain(first), rest
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
        """The repository this image is served from under `project`."""
        return f"{project}/{self.repository}"

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

    Raises RegistryError(NAME_INVALID) when the result is not a valid
    repository name (for example an upstream host with a port).
    """
    repository = ref.repository
    for rule in rules:
        mapped = rule.apply(repository)
        if mapped is not None:
            repository = mapped
            break
    name = f"{project}/{repository}"
    try:
        return validate_name(name)
    except RegistryError:
        raise RegistryError("NAME_INVALID", f"image {ref} maps to {name!r}, which is not a valid repository "
                            "name (a registry host with a port cannot be nested; add a mapping rule)") from None
