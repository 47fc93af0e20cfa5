"""Old name of ``disk/disk_config.py``; delete this file once nothing imports it.

Kept only so importers outside disk/ keep working until they move to the new name:
tests/unit/core/test_config_schema.py (see /work/notes/requests/G.md).
"""

from __future__ import annotations

from .disk_config import *  # noqa: F403
from .disk_config import DISK_DEFAULTS  # noqa: F401
