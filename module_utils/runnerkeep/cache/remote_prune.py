"""``cache remote-prune``: delete the fleet tier's key tags least recently pushed or used first.

A key's last use is its index's ``io.runnerkeep.used`` annotation (remote_push.touch_key, which
the front door calls after a fleet restore by a runner that may push); its age is that of the
later of its push and its last use.

Only runnerkeep's own tags are candidates: a tag whose manifest is an index annotated with
that very key (``io.runnerkeep.key``) and a push time. A tag pushed by docker, skopeo or anyone
else is never deleted, nor is an index another tag still names (deleting a manifest deletes it
for every tag). Deleting an index leaves its blobs to the registry's garbage collection.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..remote.errors import RemoteMiss
from .remote_layout import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    BadRemoteData,
    index_key,
    index_pushed,
    media_type_of,
    parse_json_object,
    parse_rfc3339,
    rfc3339,
)
from .remote_push import USED_ANNOTATION
from .store import KEY_RE


@dataclass(frozen=True)
class RemoteKey:
    key: str
    digest: str  # the index's
    pushed: float
    manifests: tuple[str, ...] = ()  # the image manifests it lists
    used: float | None = None  # last restored from the fleet tier (touch_key)

    @property
    def last(self) -> float:
        """When the key was last pushed or used: what both rules measure."""
        return self.pushed if self.used is None else max(self.pushed, self.used)


def remote_prune(
    client: Any,
    *,
    max_age: float | None,
    keep: int | None,
    dry_run: bool,
    now: float,
) -> dict[str, Any]:
    """Delete runnerkeep key tags last pushed or used more than ``max_age`` seconds before
    ``now``, and all but the ``keep`` most recently pushed or used; either rule alone, or both
    (a key goes when either says so). ``dry_run``: say what would go, delete nothing. Returns
    {deleted: [{key, digest, pushed, used}], kept, foreign_tags, shared, dry_run}."""
    if max_age is None and keep is None:
        raise ConfigError("remote-prune needs --max-age or --keep (or both)")
    if max_age is not None and max_age < 0:
        raise ConfigError(f"--max-age must not be negative, got {max_age}")
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 0):
        raise ConfigError(f"--keep must be a count of keys (0 or more), got {keep!r}")
    keys, foreign, foreign_children = remote_keys(client)
    doomed = _doomed(keys, max_age, keep, now)
    # A digest another (kept or foreign) tag names must stay: deleting it would untag that too.
    named_elsewhere = set(foreign.values()) | {k.digest for k in keys if k not in doomed}
    deleted, shared = [], []
    for item in doomed:
        record = {
            "key": item.key,
            "digest": item.digest,
            "pushed": rfc3339(item.pushed),
            "used": None if item.used is None else rfc3339(item.used),
        }
        if item.digest in named_elsewhere or _twice(doomed, item):
            shared.append(record)
        else:
            deleted.append(record)
    gone = {record["key"] for record in deleted}
    # The image manifests only deleted indexes list go too: the registry's garbage collection
    # (run without --delete-untagged, which would take every index's manifests) keeps a
    # manifest revision and its layers until it is deleted.
    still_used = set(foreign.values()) | foreign_children
    still_used |= {m for k in keys if k.key not in gone for m in k.manifests}
    orphans = sorted({m for k in doomed if k.key in gone for m in k.manifests} - still_used)
    if not dry_run:
        for digest in [record["digest"] for record in deleted] + orphans:
            # Gone already (another prune) is what we wanted.
            with contextlib.suppress(RemoteMiss):
                client.delete_manifest(digest)
    return {
        "result": "would_delete" if dry_run else "pruned",
        "deleted": deleted,
        "manifests_deleted": orphans,
        "kept": len(keys) - len(doomed),
        "foreign_tags": len(foreign),
        "shared": shared,
        "dry_run": dry_run,
    }


def _twice(doomed: list[RemoteKey], item: RemoteKey) -> bool:
    return sum(1 for other in doomed if other.digest == item.digest) > 1


def _doomed(
    keys: list[RemoteKey], max_age: float | None, keep: int | None, now: float
) -> list[RemoteKey]:
    """Least recently pushed or used first: the keys either rule deletes."""
    ordered = sorted(keys, key=lambda k: (k.last, k.key))
    beyond_keep = len(ordered) - keep if keep is not None else 0
    doomed = []
    for position, item in enumerate(ordered):
        too_old = max_age is not None and now - item.last > max_age
        if too_old or position < beyond_keep:
            doomed.append(item)
    return doomed


def remote_keys(client: Any) -> tuple[list[RemoteKey], dict[str, str], set[str]]:
    """The repository's runnerkeep keys; every other tag (tag -> its manifest digest); the
    manifests those other tags' indexes or lists name."""
    keys: list[RemoteKey] = []
    foreign: dict[str, str] = {}
    children: set[str] = set()
    try:
        tags = client.list_tags()
    except RemoteMiss:
        tags = []  # no such repository yet: nothing pushed, nothing to prune
    for tag in tags:
        try:
            manifest = client.get_manifest(tag, INDEX_TYPES + MANIFEST_TYPES)
        except RemoteMiss:
            continue  # deleted since the listing
        document = _document(tag, manifest)
        ours = _runnerkeep_key(tag, manifest, document)
        if ours is None:
            foreign[tag] = manifest.digest
            children.update(_listed(document))
        else:
            keys.append(ours)
    return keys, foreign, children


def _document(tag: str, manifest: Any) -> dict[str, Any] | None:
    try:
        return parse_json_object(manifest.data, f"the manifest of {tag}")
    except BadRemoteData:
        return None


def _listed(document: dict[str, Any] | None) -> set[str]:
    """The digests an index or list names (nothing for an image manifest or bad JSON)."""
    manifests = (document or {}).get("manifests")
    if not isinstance(manifests, list):
        return set()
    return {
        item["digest"]
        for item in manifests
        if isinstance(item, dict) and isinstance(item.get("digest"), str)
    }


def _runnerkeep_key(tag: str, manifest: Any, document: dict[str, Any] | None) -> RemoteKey | None:
    if not isinstance(tag, str) or not KEY_RE.fullmatch(tag) or document is None:
        return None
    try:
        if media_type_of(document, manifest.media_type) not in INDEX_TYPES:
            return None
    except BadRemoteData:
        return None
    pushed = index_pushed(document)
    if index_key(document) != tag or pushed is None:
        return None
    used = parse_rfc3339(document["annotations"].get(USED_ANNOTATION))
    return RemoteKey(tag, manifest.digest, pushed, tuple(sorted(_listed(document))), used)
