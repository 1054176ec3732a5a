"""Where a build from cluster definitions finds what they need: source layouts and registries.

`bundle build --cluster-definition` packs what its explicit options name
(`--layout`, `--image`, `--images-file`, `--chart`) and then, for each image
or OCI chart a definition needs that those did not already bring, looks in
the sources in the order given:

- ``--source-layout DIR``: an OCI image layout whose entries are taken only
  when a definition needs them (an entry matches by its full reference, or,
  for a reference pinned by digest, by repository and digest);
- ``--from-registry HOST[:PORT][/PREFIX]``: a registry holding images under
  ``PREFIX/<original reference>`` (the original host nested as the
  appliance nests it, ``host:5000`` as ``host_5000``), such as another
  cargohold appliance (``PREFIX`` = its project) or a mirror;
- ``--from-registry origin``: each image's own registry.

A source that does not hold an image (a 404) passes it on to the next; any
other failure (credentials, TLS, a damaged layout) fails the build. What no
source holds is left for the readiness check (`bundles.buildcheck`) to
report, so the operator sees every gap at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bundles.build import BuildError, BundleBuilder, SourceMissing
from registry.digest import Descriptor
from registry.errors import RegistryError
from registry.names import ImageReference, nest_domain

ORIGIN = "origin"


@dataclass(frozen=True)
class RegistrySource:
    """A registry to pull required images from; `host` None is each image's own registry."""

    host: str | None
    prefix: str = ""

    @classmethod
    def parse(cls, text: str) -> RegistrySource:
        """``origin`` or ``HOST[:PORT][/PREFIX]``; raises BuildError naming the problem."""
        text = text.strip().rstrip("/")
        if text == ORIGIN:
            return cls(None)
        if "://" in text:
            raise BuildError(f"--from-registry {text!r}: give HOST[:PORT][/PREFIX] without a scheme "
                             "(HTTPS is the default; --registry-insecure talks plain HTTP)")
        host, _, prefix = text.partition("/")
        if not host or any(c.isspace() for c in text):
            raise BuildError(f"--from-registry {text!r}: expected 'origin' or HOST[:PORT][/PREFIX]")
        return cls(host, prefix.strip("/"))

    def locate(self, ref: ImageReference) -> str:
        """Where this source keeps `ref` (tag and digest kept)."""
        if self.host is None:
            return str(ref)
        path = f"{nest_domain(ref.domain)}/{ref.path}"
        located = f"{self.host}/{self.prefix}/{path}" if self.prefix else f"{self.host}/{path}"
        return located + (f":{ref.tag}" if ref.tag else "") + (f"@{ref.digest}" if ref.digest else "")

    def __str__(self) -> str:
        return ORIGIN if self.host is None else f"{self.host}/{self.prefix}".rstrip("/")


@dataclass(frozen=True)
class Resolution:
    """What resolving the definitions' needs did."""

    added: tuple[tuple[str, str], ...]  # (reference, the source it came from)
    unresolved: tuple[str, ...]  # needed, in no source (the check reports them)
    warnings: tuple[str, ...] = ()


def _satisfied(builder: BundleBuilder, ref: ImageReference) -> bool:
    """Whether the explicit content already answers for `ref` (the check then judges it, digest and all)."""
    for reference, image in builder.images.items():
        have = ImageReference.parse(reference)
        if have.repository != ref.repository:
            continue
        if ref.tag and have.tag == ref.tag:
            return True
        if not ref.tag and ref.digest and image.descriptor.digest == ref.digest:
            return True
    return False


def _layout_match(builder: BundleBuilder, entries: Sequence[tuple[str, Descriptor]],
                  ref: ImageReference) -> str | None:
    """The entry name of a source layout that holds `ref`, or None."""
    for name, desc in entries:
        try:
            have = ImageReference.parse(builder.qualify(name, ""))
        except (BuildError, RegistryError):
            continue  # short or bare names are reported once per layout by `resolve`
        if have.repository != ref.repository:
            continue
        if ref.digest is not None:
            if desc.digest == ref.digest and (ref.tag is None or have.tag in (None, ref.tag)):
                return name
        elif have.tag == ref.tag:
            return name
    return None


def resolve(builder: BundleBuilder, layouts: Sequence[Path], registries: Sequence[RegistrySource]) -> Resolution:
    """Add to `builder` everything its definitions need that it lacks, from the sources in order.

    Raises BuildError for a source that fails other than by not holding an image.
    """
    wanted: dict[str, None] = {}
    for definition in builder.definitions:
        for image in definition.images:
            wanted.setdefault(image.reference)
    warnings: list[str] = []
    layout_entries: list[tuple[Path, list[tuple[str, Descriptor]]]] = []
    for root in layouts:
        entries = builder.layout_entries(root)
        unnamed = []
        for name, _ in entries:
            try:
                builder.qualify(name, "")
            except BuildError:
                unnamed.append(name)
        if unnamed:
            warnings.append(f"source layout {root}: entries without a registry host are not matched "
                            f"({', '.join(sorted(unnamed))}); give --default-registry HOST to use them")
        layout_entries.append((root, entries))
    added: list[tuple[str, str]] = []
    unresolved: list[str] = []
    for reference in wanted:
        ref = ImageReference.parse(reference)
        if _satisfied(builder, ref):
            continue
        source = _from_layouts(builder, layout_entries, ref, reference)
        if source is None:
            source = _from_registries(builder, registries, ref, reference)
        if source is None:
            unresolved.append(reference)
        else:
            added.append((reference, source))
    return Resolution(tuple(added), tuple(unresolved), tuple(warnings))


def _from_layouts(builder: BundleBuilder, layouts: Sequence[tuple[Path, list[tuple[str, Descriptor]]]],
                  ref: ImageReference, reference: str) -> str | None:
    for root, entries in layouts:
        name = _layout_match(builder, entries, ref)
        if name is not None:
            builder.add_layout(root, [f"{name}={reference}"])
            return f"layout {root}"
    return None


def _from_registries(builder: BundleBuilder, registries: Sequence[RegistrySource], ref: ImageReference,
                     reference: str) -> str | None:
    for registry in registries:
        located = registry.locate(ref)
        try:
            builder.add_image(f"{located}={reference}")
        except SourceMissing:
            continue
        return f"registry {registry}"
    return None
