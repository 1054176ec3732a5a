"""Which tags a promoted release owns: the owner of released tags for `registry.protection`.

The promoted release owns every tag it carries (its ``release_images`` rows
with a tag). Those tags move only by promoting another release or rolling
back (`bundles.releases`, which moves them without asking this module);
staged, superseded, rolled-back and discarded releases own nothing, so a
tag that only they carry is as movable as any pushed tag. `web.app` adds
`promoted_release_tags` to the registry's protection when it builds the
services.
"""

from __future__ import annotations

from registry.dbengine import Database, placeholders


def promoted_release_tags(db: Database, repository: str, tags: list[str]) -> dict[str, str]:
    """tag -> "promoted release N (name version)" for the tags among `tags` the promoted release owns."""
    rows = db.execute(
        "SELECT ri.tag, r.id, r.name, r.version FROM release_images ri JOIN releases r ON r.id = ri.release_id "
        f"WHERE r.state = 'promoted' AND ri.repository = ? AND ri.tag IN ({placeholders(len(tags))})",
        [repository, *tags]).fetchall() if tags else []
    return {tag: f"promoted release {rid} ({name} {version})".replace(" )", ")") for tag, rid, name, version in rows}
