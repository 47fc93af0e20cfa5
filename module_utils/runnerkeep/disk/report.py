"""Old name of ``disk/usage_report.py``; delete this file once nothing imports it.

Kept only so importers outside disk/ keep working until they move to the new name:
library/disk_facts.py, tests/unit/core/test_config_schema.py, tests/unit/core/test_module_docs.py
(see /work/notes/requests/G.md).
"""

from __future__ import annotations

from .usage_report import *  # noqa: F403
from .usage_report import disk_report  # noqa: F401
