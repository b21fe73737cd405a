"""The data set's stamp: rewritten exactly when the contents change, whatever the file names,
and never a crash while Snakemake builds its DAG."""

import os

import numpy as np
import pytest
from conftest import class_image, save_image
from imageclf.data import datafiles


@pytest.fixture
def root(tmp_path):
    rng = np.random.default_rng(0)
    for split, label in (("train", "a"), ("train", "b"), ("val", "a")):
        for i in range(2):
            save_image(class_image(i, rng), tmp_path / "data" / split / label / f"{i}.png", "RGB")
    return tmp_path / "data"


def stamp_of(root, tmp_path, extra=()):
    stamp, record = tmp_path / "stamp", tmp_path / "record.tsv"
    digest = datafiles.update_data_stamp(root, ("train", "val"), stamp, record, extra_files=extra)
    return digest, stamp.stat().st_mtime_ns


def test_the_stamp_changes_with_the_contents_only(root, tmp_path):
    first, written = stamp_of(root, tmp_path)
    assert stamp_of(root, tmp_path) == (first, written)  # nothing changed: not even rewritten
    victim = root / "train" / "a" / "0.png"
    times = victim.stat()
    os.chmod(victim, 0o600)  # metadata only
    assert stamp_of(root, tmp_path) == (first, written)
    victim.write_bytes((root / "train" / "b" / "1.png").read_bytes())
    os.utime(victim, ns=(times.st_atime_ns, times.st_mtime_ns))  # cp -p keeps the old time
    changed, _ = stamp_of(root, tmp_path)
    assert changed != first


@pytest.mark.parametrize("name", ["tab\there.png", "line\u2028break.png", "cr\rhere.png", "café.png"])
def test_any_file_name_survives_the_record(root, tmp_path, name):
    (root / "train" / "a" / name).write_bytes(b"x")
    first = stamp_of(root, tmp_path)
    assert stamp_of(root, tmp_path) == first  # the record read back: same digest, stamp kept


def test_names_that_are_not_utf8_and_broken_links_do_not_crash(root, tmp_path):
    folder = os.fsencode(root / "train" / "a")
    with open(os.path.join(folder, b"caf\xe9.png"), "wb") as handle:  # a Latin-1 name from an old archive
        handle.write(b"x")
    os.symlink(tmp_path / "moved_away.png", root / "train" / "b" / "link.png")
    first = stamp_of(root, tmp_path)
    assert stamp_of(root, tmp_path) == first


def test_extra_files_are_watched_by_content(root, tmp_path):
    labels = tmp_path / "test_labels.csv"
    labels.write_text("image_name,label\nt0,a\n")
    first, _ = stamp_of(root, tmp_path, [labels])
    times = labels.stat()
    labels.write_text("image_name,label\nt0,b\n")
    os.utime(labels, ns=(times.st_atime_ns, times.st_mtime_ns))
    assert stamp_of(root, tmp_path, [labels])[0] != first
