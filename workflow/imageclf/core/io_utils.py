"""Atomic writes: a file appears whole or not at all, with the permissions the umask gives."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path

from .errors import DataError


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path next to `path`; rename it over `path` only on success.

    The temporary file is created with mode 0666 minus the umask, as open() creates any new file
    (tempfile.mkstemp would give 0600, and a teammate could not read the result)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def write_json(path: str | Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path, what: str = "file"):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: cannot read this {what} ({error})") from error


def copy_file(source: str | Path, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)


def link_file(source: str | Path, path: str | Path) -> None:
    """`path` as a hard link to `source` (no bytes written), or a copy where the file system has
    no hard links between them. Safe with this module's writers: they replace a file by a rename,
    so rewriting one of the two names never changes the other. The file's time is set to now, as
    a copy's would be (Snakemake orders files by it); `source` shares it."""
    with atomic_path(path) as tmp:
        os.unlink(tmp)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.utime(tmp)


def torch_save(obj, path: str | Path) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
