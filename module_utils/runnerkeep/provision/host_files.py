"""Directories, files, removals and ``NAME=value`` lines, each written without following a
link a job may have planted: paths are opened with O_NOFOLLOW, files are replaced by a rename
of a temp file written beside them (a link in the way is replaced, never written through)."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from typing import Any

from .changes import Changes, LayoutError, printable
from .ownership import fix_owner_and_mode, group_id, parse_mode, user_id

# What a managed file may hold: configs, unit files, scripts. Past this it is not one of ours.
MAX_FILE_BYTES = 1024 * 1024
_DIFF_MAX_BYTES = 64 * 1024
_NAME_MAX = 255
_RANDOM_MAX_BYTES = 4096
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def ensure_directory(spec: dict[str, Any], changes: Changes) -> None:
    """``path`` is a directory (parents made 0755) with this owner and mode."""
    path, mode = spec["path"], parse_mode(spec["mode"], spec["path"])
    info = _lstat(path)
    if info is None:
        changes.note(path, "created")
        changes.diff(path, "absent\n", "directory\n")
        if changes.check_mode:
            return
        _make_parents(os.path.dirname(path) or "/")
        os.mkdir(path, 0o700)
    elif stat.S_ISLNK(info.st_mode):
        raise LayoutError(f"{path} is a symlink where a directory belongs: remove it and run again")
    elif not stat.S_ISDIR(info.st_mode):
        raise LayoutError(f"{path} exists and is not a directory: move it away and run again")
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        fix_owner_and_mode(fd, path, spec["owner"], spec["group"], mode, changes)
    finally:
        os.close(fd)


def ensure_file(spec: dict[str, Any], changes: Changes, secret: bool = False) -> None:
    """``path`` holds ``content`` with this owner and mode. With ``random_bytes`` it is made
    once from that many random bytes (a key) and then only kept in owner and mode (made again
    only when it is shorter than that); without
    either, an existing file only gets its owner and mode (one another step writes)."""
    path, mode = spec["path"], parse_mode(spec["mode"], spec["path"])
    content, random_bytes = spec.get("content"), spec.get("random_bytes")
    if random_bytes is not None and not 1 <= random_bytes <= _RANDOM_MAX_BYTES:
        raise LayoutError(
            f"{path}: random_bytes is {random_bytes}; a key needs 1 to {_RANDOM_MAX_BYTES} bytes"
        )
    if random_bytes is not None and content is not None:
        raise LayoutError(f"{path}: give content or random_bytes, not both")
    fd, old = _open_regular(path)
    if fd is not None and random_bytes and os.fstat(fd).st_size < random_bytes:
        # A key shorter than asked (an empty file, a cut write) cannot be used: a new one.
        os.close(fd)
        fd, old = None, b""
    if fd is not None:
        try:
            if content is None or old == content.encode("utf-8"):
                fix_owner_and_mode(fd, path, spec["owner"], spec["group"], mode, changes)
                return
        finally:
            os.close(fd)
    elif content is None and not random_bytes:
        if changes.check_mode:
            return
        raise LayoutError(f"{path} does not exist (it is not this task's to create)")
    if content is None:  # random_bytes: made once, its bytes never shown
        data, secret = os.urandom(random_bytes), True
    else:
        data = content.encode("utf-8")
    changes.note(path, "created" if old is None and fd is None else "content")
    changes.note_content(path)
    if not secret:
        changes.diff(path, _text(old), _text(data))
    if not changes.check_mode:
        _replace(path, data, spec["owner"], spec["group"], mode)


def ensure_absent(path: str, changes: Changes) -> None:
    """No file or link at ``path`` (a directory there is refused, not removed)."""
    info = _lstat(path)
    if info is None:
        return
    if stat.S_ISDIR(info.st_mode):
        raise LayoutError(f"{path} is a directory where a file was managed: remove it by hand")
    changes.note(path, "removed")
    changes.note_content(path)
    changes.diff(path, "present\n", "absent\n")
    if not changes.check_mode:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def ensure_lines(path: str, lines: dict[str, str], changes: Changes) -> None:
    """Each ``NAME=value`` of ``lines`` in the file at ``path``: the last line starting with
    ``NAME=`` is replaced, or the line is added at the end. A new file is root's, 0644; an
    existing one keeps its owner and mode (it is the runner's own file). The file's directory
    may belong to a job's user: it is reached without following a link anywhere on the way,
    and the file is read and replaced through that directory's descriptor."""
    _check_lines(path, lines)
    directory, name = os.path.split(path)
    dir_fd = _open_dir_no_links(directory, create=not changes.check_mode)
    try:
        fd, old = _open_regular(name, dir_fd) if dir_fd is not None else (None, None)
        if fd is None:
            owner, group, mode = 0, 0, 0o644
        else:
            info = os.fstat(fd)
            owner, group, mode = info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)
            os.close(fd)
        text = (old or b"").decode("utf-8", errors="surrogateescape")
        new = _with_lines(text, lines)
        if old is not None and new == text:
            return
        changes.note(path, "created" if old is None else "content")
        changes.note_content(path)
        changes.diff(path, text, new)
        if not changes.check_mode:
            data = new.encode("utf-8", errors="surrogateescape")
            _replace_in(dir_fd, name, data, owner, group, mode)
    finally:
        if dir_fd is not None:
            os.close(dir_fd)


def _check_lines(path: str, lines: dict[str, str]) -> None:
    for name, value in lines.items():
        if not _ENV_NAME.match(str(name)):
            raise LayoutError(f"{path}: {name!r} is not a variable name (letters, digits, _)")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise LayoutError(f"{path}: the value of {name} must be one line of text")
        if any(c in str(value) for c in "\n\r\0"):
            raise LayoutError(f"{path}: the value of {name} must be one line of text")


def _open_dir_no_links(directory: str, create: bool) -> int | None:
    """A descriptor of ``directory`` reached one component at a time without following a
    link; missing components are made (root, 0755) when ``create``, else None is returned."""
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in [p for p in directory.split("/") if p]:
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    os.close(fd)
                    return None
                made = True
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    made = False
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                if made:
                    os.fchmod(child, 0o755)  # whatever the umask
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise LayoutError(
                        f"{directory}: {part} on the way is a link or not a directory; "
                        "host_layout does not follow links to a file it edits: name the real "
                        "directory"
                    ) from None
                raise
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise


def _new_temp_in(dir_fd: int, name: str) -> tuple[str, int]:
    """A new temp file beside ``name``, under a name nobody can guess (the directory may be a
    job's, which could plant a name it knows)."""
    for _attempt in range(8):
        tmp = f".rk-layout-{os.urandom(6).hex()}-{name}"[:_NAME_MAX]
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            return tmp, os.open(tmp, flags, 0o600, dir_fd=dir_fd)
        except FileExistsError:
            continue
    raise LayoutError(f"{name}: no free temp name beside it after 8 tries")


_TEMP_RE = re.compile(r"\.rk-layout-[0-9a-f]{12}-")


def _remove_dead_temps(dir_fd: int, name: str) -> None:
    """Temp files beside ``name`` that a run killed between writing and renaming left behind.
    Only ours go: our name pattern for ``name``, a regular file of root's with one link (a job
    cannot make a file root owns; a hard link to one has two names). The host lock
    (``layout.apply_layout``) says no other run is writing beside it now. Best effort per
    temp: in a job's directory the job may swap what is at the name between the stat and the
    unlink (a directory: EISDIR); that temp stays, and the write goes on."""
    with os.scandir(dir_fd) as entries:
        names = [e.name for e in entries if e.name.startswith(".rk-layout-")]
    for temp in names:
        found = _TEMP_RE.match(temp)
        if not found or temp[found.end() :] != name[: _NAME_MAX - found.end()]:
            continue
        with contextlib.suppress(OSError):
            info = os.stat(temp, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISREG(info.st_mode) and info.st_uid == 0 and info.st_nlink == 1:
                os.unlink(temp, dir_fd=dir_fd)


def _replace_in(
    dir_fd: int, name: str, data: bytes, uid: int, gid: int, mode: int, shown: str = ""
) -> None:
    """``name`` in the open directory holds ``data``: a temp file beside it (owner and mode set
    before a byte is written, so a secret is never readable by others), fsync, rename over
    whatever is at ``name`` (a link there is replaced, not followed), fsync the directory.
    Temps a killed run left beside it go first."""
    _remove_dead_temps(dir_fd, name)
    tmp, fd = _new_temp_in(dir_fd, name)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        _write_all(fd, data, shown or name)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.fsync(dir_fd)


def _with_lines(text: str, lines: dict[str, str]) -> str:
    rows = text.splitlines()
    for name, value in lines.items():
        line = f"{name}={value}"
        hits = [i for i, row in enumerate(rows) if row.startswith(f"{name}=")]
        if hits:
            rows[hits[-1]] = line
        else:
            rows.append(line)
    return "".join(row + "\n" for row in rows)


def _make_parents(directory: str) -> None:
    """Missing parent directories, root's and 0755 whatever the umask."""
    if os.path.isdir(directory) or directory == os.path.dirname(directory):
        return
    _make_parents(os.path.dirname(directory))
    try:
        os.mkdir(directory, 0o755)
    except FileExistsError:
        return  # made meanwhile by someone else, or not a directory: the next step says so
    os.chmod(directory, 0o755)


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _open_regular(path: str, dir_fd: int | None = None) -> tuple[int | None, bytes | None]:
    """(fd, content) of the regular file at ``path``; (None, None) when there is none, and
    (None, b"") when a link or a special file is in the way (it will be replaced)."""
    try:
        fd = os.open(
            path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd
        )
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None, b""
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        if stat.S_ISDIR(info.st_mode):
            raise LayoutError(f"{path} is a directory where a file belongs: move it away")
        return None, b""
    if info.st_size > MAX_FILE_BYTES:
        return fd, None
    chunks, left = [], MAX_FILE_BYTES + 1
    while left > 0:
        chunk = os.read(fd, min(left, 65536))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return fd, b"".join(chunks)


def _replace(path: str, data: bytes, owner: str, group: str, mode: int) -> None:
    """``path`` holds ``data``: see ``_replace_in``."""
    uid, gid = user_id(owner, False), group_id(group, False)
    dir_fd = os.open(os.path.dirname(path) or "/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _replace_in(dir_fd, os.path.basename(path), data, uid, gid, mode, shown=path)
    finally:
        os.close(dir_fd)


def _write_all(fd: int, data: bytes, path: str) -> None:
    """All of ``data``; a failure names the file (a full disk says nothing of it)."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError as exc:
        raise LayoutError(
            f"writing {printable(path)} failed: {exc.strerror or exc}; the file was left as it was"
        ) from None


def _text(data: bytes | None) -> str:
    if data is None:
        return ""
    if len(data) > _DIFF_MAX_BYTES:
        return f"({len(data)} bytes)\n"
    return data.decode("utf-8", errors="replace")
