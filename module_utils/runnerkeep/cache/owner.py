"""Root never works in the store as root: it becomes the store's owner first.

The store belongs to the service user (``runnerkeep``). A file root created there (a lock, an
entry, a layout directory) would be one the service and the maintenance timer, which run as
that user, can no longer replace; and root acting inside a tree is what the boundary avoids.
So a root process about to use a store owned by another user drops to that user for good
(the command does nothing else), keeping Docker access through the docker group as the
service does.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd

from ..errors import RunnerkeepError

DOCKER_GROUP = "docker"


def drop_to_store_owner(store_dir: str) -> bool:
    """As root, become the owner of ``store_dir`` when that is another user; True if dropped.
    Nothing happens for a non-root caller, a root-owned store or one that does not exist."""
    if os.geteuid() != 0:
        return False
    try:
        st = os.stat(store_dir)
    except OSError:
        return False
    if st.st_uid == 0:
        return False
    try:
        user = pwd.getpwuid(st.st_uid)
    except KeyError:
        raise RunnerkeepError(
            f"the cache store {store_dir} belongs to uid {st.st_uid}, which has no user: "
            "give it to the service user (the image_cache role does)"
        ) from None
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    with contextlib.suppress(KeyError):
        groups.add(grp.getgrnam(DOCKER_GROUP).gr_gid)
    os.setgroups(sorted(groups))
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)
    return True
