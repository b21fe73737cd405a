"""Noticing every change to the data set's files, cheaply, while Snakemake builds its DAG.

Snakemake decides what is stale by modification times. That misses a file replaced by one whose
old time is kept (`cp -p`, `rsync -a`, `tar x`), and listing a million images as inputs makes
every dry run slow. Instead, each group of splits (train+val, test) has a stamp file,
`<stamp>`, holding a digest of the group's contents (relative path and SHA-256 of every file).
The index rule of the group takes the stamp as its input, and the stamp is rewritten (and so
made newer than the index) only when that digest changes.

Hashing every file on every dry run would be slow too, so a record beside the stamp keeps each
file's size, modification time, change time and inode with its hash: a file is read again only
when one of these changed. The change time (ctime) cannot be set back by `cp -p`, `rsync -a` or
`tar x`, so a replaced file is always read again; a file whose metadata changed but whose bytes
did not (chmod, touch) is read again once and leaves the stamp as it is.

Torch-free: the Snakefile imports it while building the DAG.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..core.io_utils import file_sha256, write_text
from .images import is_junk

log = logging.getLogger("imageclf.datafiles")

RECORD_HEADER = "# imageclf data record v2"
UNREADABLE = (-1, -1, -1, -1)  # the stat of a file that cannot be stat-ed: the index job names it


def utf8(text: str) -> bytes:
    """File names as bytes, also those that are not valid UTF-8 (os.scandir escapes those)."""
    return text.encode("utf-8", "surrogateescape")


def signature(info: os.stat_result) -> tuple[int, int, int, int]:
    """What says a file may have changed: size, modification time, change time, inode."""
    return info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino


def scan(root: Path, splits) -> dict[str, tuple[int, int, int, int]]:
    """relative path -> (size, mtime_ns, ctime_ns, inode) of every file under root/<split>/,
    junk (hidden files, Thumbs.db, ...) left out, as the index leaves it out. An empty folder
    (nothing but junk in it: an empty class folder, which the index refuses) is an entry of its
    own, its relative path with a trailing '/', so adding one changes the digest; a data set
    without empty folders has the digest it always had."""
    found = {}
    prefix = len(os.path.join(str(root), ""))  # entry paths start with root/: cut it off (relpath is slow)
    stack = [os.path.join(str(root), split) for split in splits]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:  # unreadable folder, symlink loop: the index job reports it
            found[folder[prefix:]] = UNREADABLE
            continue
        entries = [entry for entry in entries if not is_junk(entry.name)]
        if not entries:
            try:
                found[folder[prefix:] + "/"] = signature(os.stat(folder))
            except OSError:
                found[folder[prefix:] + "/"] = UNREADABLE
        for entry in entries:
            try:
                if entry.is_dir():
                    stack.append(entry.path)
                    continue
                found[entry.path[prefix:]] = signature(entry.stat())
            except OSError:  # a broken symlink, a file that vanished: the index job reports it
                found[entry.path[prefix:]] = UNREADABLE
    return found


def path_of(root: Path, name: str) -> Path:
    """A record name back to its file: relative to root, or an extra file's own path after //."""
    return Path(name[2:]) if name.startswith("//") else root / name


def stat_digest(root: Path, stats: dict) -> str:
    """A digest of the files' metadata in the order the scan met them: only the fast path's key (the
    same order on an unchanged folder); another order just takes the slower, still exact, path."""
    lines = "".join(f"{name}\0{stat}\n" for name, stat in stats.items())
    return hashlib.sha256(utf8(f"{root.resolve()}\n{lines}")).hexdigest()


def content_digest(hashes: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(hashes):
        digest.update(utf8(f"{name}\0{hashes[name]}\n"))
    return digest.hexdigest()


EMPTY_FOLDER = "empty folder"  # the "hash" of an empty folder's entry (see scan)


def hash_file(path: Path) -> str:
    if path.is_dir():
        return EMPTY_FOLDER
    try:
        return file_sha256(path)
    except OSError as error:  # the index job names the file; here it only has to count as changed
        return f"unreadable:{error.errno}"


def read_record(path: Path) -> tuple[str, str, dict]:
    """(stat digest, content digest, {relative path: (stat tuple, sha256)}) or empty ones."""
    try:
        lines = path.read_text().split("\n")  # not splitlines(): it also splits at \r, \x0c, U+2028
    except (FileNotFoundError, UnicodeDecodeError):
        return "", "", {}
    if len(lines) < 2 or lines[0] != RECORD_HEADER:
        return "", "", {}
    try:
        stat_hex, content_hex = lines[1].split("\t")
        entries = {}
        for line in lines[2:]:
            if line:
                name, stat, sha = json.loads(line)  # names JSON-quoted: any character, also \t and \n
                entries[name] = (tuple(stat), sha)
    except ValueError:  # a damaged record is only a cache: read the files again
        return "", "", {}
    return stat_hex, content_hex, entries


def write_record(path: Path, stat_hex: str, content_hex: str, stats: dict, hashes: dict) -> None:
    lines = [RECORD_HEADER, f"{stat_hex}\t{content_hex}"]
    lines += [json.dumps([name, list(stats[name]), hashes[name]]) for name in sorted(stats)]
    write_text(path, "\n".join(lines) + "\n")


def update_data_stamp(root, splits, stamp, record, threads: int = 4, extra_files=()) -> str:
    """Bring `stamp` up to date with the contents of root/<splits>; returns the content digest.

    The stamp is written only when its digest changes, so its modification time says when the
    contents last changed. `record` is the stat-and-hash cache (see the module docstring).
    extra_files: further files watched the same way (the test labels), by their own path."""
    root, stamp, record = Path(root), Path(stamp), Path(record)
    stats = scan(root, splits)
    for extra in extra_files:  # by the path as given: a relative one stays valid in a copied project
        try:
            stats[f"//{extra}"] = signature(os.stat(extra))
        except OSError:
            stats[f"//{extra}"] = UNREADABLE
    stat_hex = stat_digest(root, stats)
    old_stat_hex, old_content_hex, entries = read_record(record)
    if stat_hex == old_stat_hex:  # nothing touched since the last look: the common, fast case
        content_hex = old_content_hex
    else:
        hashes = {name: entries[name][1] for name, stat in stats.items()
                  if name in entries and entries[name][0] == stat}
        changed = [name for name in stats if name not in hashes]
        if len(changed) > 1000:
            print(f"imageclf: reading {len(changed):,} new or changed files under {root} to notice "
                  "content changes (once)", file=sys.stderr)
        with ThreadPoolExecutor(max_workers=threads) as pool:
            hashes.update(zip(changed, pool.map(lambda name: hash_file(path_of(root, name)), changed)))
        content_hex = content_digest(hashes)
        write_record(record, stat_hex, content_hex, stats, hashes)
    keep_stamp(stamp, content_hex, content_hex + "\n")
    return content_hex


def update_file_stamp(path, stamp, record) -> str:
    """Bring `stamp` up to date with one file's content (a local weights file); returns its
    SHA-256. The stamp holds the digest and the path; the record (a data record of one entry)
    keeps the digest with the file's signature, so an unchanged file is not read again."""
    path = Path(path).expanduser()
    name = f"//{path}"
    stats = {name: signature(path.stat())}
    _, _, entries = read_record(Path(record))
    if name in entries and entries[name][0] == stats[name]:
        digest = entries[name][1]
    else:
        digest = file_sha256(path)
        write_record(Path(record), "", digest, stats, {name: digest})
    keep_stamp(stamp, digest, f"{digest}  {path}\n")
    return digest


def keep_stamp(stamp, digest: str, text: str) -> None:
    """Write `text` (which starts with `digest`) to `stamp` only when the stamp holds another digest:
    its modification time then says when the content last changed, which is what Snakemake reads."""
    try:
        current = Path(stamp).read_text().split()[0]
    except (OSError, IndexError):
        current = None
    if current != digest:
        write_text(stamp, text)
