"""Files out and in: atomic writes (unique temp file, fsync, rename), downloads, the cache, and
checking an output directory before any work.
"""
from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
import urllib.request
from typing import Any, Callable

from tqdm import tqdm

from imgpt.cli import UserError


def cache_dir() -> str:
    """Where downloaded models and datasets are kept: $IMGPT_CACHE, else ~/.cache/imgpt."""
    return os.environ.get("IMGPT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "imgpt")


def temp_path(path: str) -> str:
    """Where a file is written before its rename: unique per host and process, since two nodes sharing a
    filesystem may run the same pid and each would otherwise rename (or delete) the other's half-written file."""
    return f"{path}.{socket.gethostname()}.{os.getpid()}.tmp"


def download(url: str, path: str) -> None:
    """Fetch url into path with a progress bar; the file appears only once it is complete."""
    tmp = temp_path(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
            size = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, desc=os.path.basename(path)) as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_atomic(path: str, write: Callable[[Any], None]) -> None:
    """Write `path` (binary) through `write(file)`, atomically: a temp file unique to this process, fsynced, renamed
    over `path`, then the directory fsynced, so a crash or power loss leaves the old file or the whole new one,
    never an empty or partial one. On failure the temp file is removed and a UserError names the path."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = temp_path(path)  # unique per host and process: two writers of the same file never share a temp file
    try:
        os.makedirs(directory, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
        fsync_dir(directory)  # ... and the rename itself survives a power loss
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def write_text_atomic(path: str, text: str) -> None:
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def fsync_dir(directory: str) -> None:
    """Make a rename in `directory` durable (not possible, nor needed, on Windows)."""
    if os.name != "nt":
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_temps(directory: str) -> list[str]:
    """Remove the temp files (temp_path) that processes of this host which no longer run left in `directory`
    (killed with -9, or a power loss, mid-write); returns their paths. Another host's are left alone: whether its
    process still runs cannot be told from here."""
    pattern = re.compile(rf".+\.{re.escape(socket.gethostname())}\.(\d+)\.tmp")
    removed = []
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        found = pattern.fullmatch(name)
        if found and not process_alive(int(found.group(1))):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(directory, name))
                removed.append(os.path.join(directory, name))
    return removed


def process_alive(pid: int) -> bool:
    """Whether process `pid` of this host runs; on Windows always True (there os.kill(pid, 0) sends a Ctrl-C)."""
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


def check_output_dir(path: str, flag: str) -> None:
    """`path` is a directory this process can write in, or one it can make: checked before any work, creating
    nothing. The test is a real write, since permission bits do not tell for root or a read-only file system."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):  # the directory, or the nearest one above it that exists
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"{flag} {path}: {existing} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot write in {existing} ({e.strerror or e})") from None
