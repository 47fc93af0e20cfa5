"""The verified Docker image cache (issue 3): save and restore that never poison a build.

Public functions; the CLI (``runnerkeep cache``) and the Ansible module ``image_cache`` are thin
front doors over these. On-disk format: docs/cache-format.md.
"""

from __future__ import annotations

from .archive_layout import familiar_ref
from .cache_config import CACHE_DEFAULTS, access_settings, cache_settings, resolve_cache_dir
from .entrymac import KeyUnavailable
from .progress import ProgressLine
from .prune import list_entries, prune_store, remove_key
from .restore import export_entry, export_entry_fd, restore_entry
from .save import SaveFailed, import_archive, import_archive_fd, make_room, save_entry
from .store import TRUSTED, CorruptBlob, CorruptEntry, Store, validate_key, validate_scope
from .tar_reader import ArchiveError
from .verify import sign_entries, verify_store

__all__ = [
    "CACHE_DEFAULTS",
    "TRUSTED",
    "ArchiveError",
    "CorruptBlob",
    "CorruptEntry",
    "KeyUnavailable",
    "ProgressLine",
    "SaveFailed",
    "Store",
    "access_settings",
    "cache_settings",
    "export_entry",
    "export_entry_fd",
    "familiar_ref",
    "import_archive",
    "import_archive_fd",
    "list_entries",
    "make_room",
    "prune_store",
    "remove_key",
    "resolve_cache_dir",
    "restore_entry",
    "save_entry",
    "sign_entries",
    "validate_key",
    "validate_scope",
    "verify_store",
]
