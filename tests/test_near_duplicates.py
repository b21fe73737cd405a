"""Near-duplicates: perceptual fingerprints, pairs across splits in leaks.csv, folds that keep
groups together. Planted data: copies of training images, resized, re-encoded as JPEG at
quality 70, cropped by 5 % and mirrored."""


import numpy as np
import pandas as pd
import pytest
from imageclf.core import tables
from imageclf.core.errors import DataError
from imageclf.core.io_utils import file_sha256, read_json
from imageclf.data import folds, index, near_duplicates
from PIL import Image, ImageOps

from benchmarks import near_duplicates as planting


def photo(seed: int, size: int = 80) -> Image.Image:
    """A small smooth 'photo', distinct per seed (the benchmark's planted images)."""
    return planting.photo(np.random.default_rng(seed), size)


cropped = planting.crop_centre
COPIES = {"resized": planting.resized, "jpeg70": planting.jpeg70, "cropped": cropped, "mirrored": ImageOps.mirror}
DEFAULT = 8  # config.yaml's data.near_duplicates.distance


def distance(a: Image.Image, b: Image.Image) -> int:
    fa, fb = near_duplicates.phash(a), near_duplicates.phash(b)
    frame = lambda f: pd.DataFrame({"phash": [near_duplicates.as_hex(f[0])],  # noqa: E731
                                    "phash_mirror": [near_duplicates.as_hex(f[1])]})
    return int(near_duplicates.distances(frame(fa), frame(fb))[0, 0])


@pytest.mark.parametrize("kind", ["resized", "jpeg70", "mirrored"])
def test_each_kind_of_copy_is_within_the_default_distance(kind):
    for seed in range(30):
        original = photo(seed)
        assert distance(original, COPIES[kind](original)) <= DEFAULT, (kind, seed)


def test_most_copies_cropped_by_5_percent_are_within_the_default_distance():
    """A crop moves every frequency a little: the fingerprint's weak spot (docs/near_duplicates.md)."""
    found = [distance(photo(seed), cropped(photo(seed))) <= DEFAULT for seed in range(30)]
    assert np.mean(found) >= 0.85


def test_a_mirrored_copy_has_distance_zero_through_the_mirror_fingerprint():
    original = photo(3)
    direct, mirror = near_duplicates.phash(original)
    assert near_duplicates.phash(ImageOps.mirror(original)) == (mirror, direct)
    assert distance(original, ImageOps.mirror(original)) == 0


def test_distinct_images_are_far_apart():
    images = [photo(seed) for seed in range(40)]
    fingerprints = [near_duplicates.phash(image) for image in images]
    frame = pd.DataFrame({"phash": [near_duplicates.as_hex(p) for p, _ in fingerprints],
                          "phash_mirror": [near_duplicates.as_hex(m) for _, m in fingerprints]})
    matrix = near_duplicates.distances(frame, frame)
    off_diagonal = matrix[~np.eye(len(images), dtype=bool)]
    assert off_diagonal.min() > DEFAULT


def planted(root, labels=("a", "b", "c"), per_class=5):
    """train/<label>/ of distinct photos, val/ and test/ with a planted copy of each kind of the
    first training images, and distinct ones. Returns {planted copy's path: its original's}."""
    seed, originals, planted_copies = 0, [], {}
    for label in labels:
        for i in range(per_class):
            path = root / "train" / label / f"{label}{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            photo(seed).save(path)
            originals.append(path)
            seed += 1
        for i in range(2):  # distinct val images of the class
            path = root / "val" / label / f"v{label}{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            photo(1000 + seed).save(path)
            seed += 1
    (root / "test").mkdir(parents=True)
    for i in range(4):
        photo(2000 + i).save(root / "test" / f"t{i}.png")
    for n, (kind, make) in enumerate(sorted(COPIES.items())):
        original = originals[n]
        for split in ("val", "test"):
            folder = root / split / original.parent.name if split == "val" else root / "test"
            copy = folder / f"{split}_{kind}_{original.stem}.jpg"
            make(Image.open(original).convert("RGB")).save(copy, quality=95)
            planted_copies[str(copy)] = str(original)
    return planted_copies


def index_all(root, out):
    frames = index.run(root, out / "train.csv", out / "val.csv", out / "classes.csv")
    index.run_test(root, out / "train.csv", out / "val.csv", out / "classes.csv", out / "test.csv",
                   out / "summary.csv", None)
    return frames


def test_planted_copies_are_found_in_leaks_and_distinct_images_are_not(tmp_path):
    root, out = tmp_path / "data", tmp_path / "index"
    copies = planted(root)
    index_all(root, out)
    record = tmp_path / "record.tsv"
    near_duplicates.run([out / "train.csv", out / "val.csv"], out / "fingerprints_labelled.csv", record)
    near_duplicates.run([out / "test.csv"], out / "fingerprints_test.csv", record)
    leaks = near_duplicates.run_leaks({"train": out / "train.csv", "val": out / "val.csv", "test": out / "test.csv"},
                                      [out / "fingerprints_labelled.csv", out / "fingerprints_test.csv"],
                                      out / "leaks.csv", DEFAULT)
    leaks = tables.read_leaks(out / "leaks.csv")
    near = leaks[leaks["kind"] == "near"]
    found = {(row.path_a, row.path_b) for row in near.itertuples()}
    # every planted copy, in val/ and test/, paired with its original in train/
    assert all((original, copy) in found for copy, original in copies.items())
    # the val copies are also found against the test copies of the same original; nothing else
    pairs = {frozenset((a, b)) for a, b in found}
    for a, b in pairs:
        roots = {copies.get(p, p) for p in (a, b)}
        assert len(roots) == 1, f"{a} ~ {b}: distinct images paired"
    assert (near["distance"] <= DEFAULT).all() and (near["distance"] >= 0).all()


def test_identical_copies_are_listed_as_identical(tmp_path):
    root, out = tmp_path / "data", tmp_path / "index"
    planted(root)
    source = root / "train" / "a" / "a4.png"  # no planted copies of it
    (root / "test" / "same.png").write_bytes(source.read_bytes())
    index_all(root, out)
    near_duplicates.run([out / "train.csv", out / "val.csv"], out / "fl.csv")
    near_duplicates.run([out / "test.csv"], out / "ft.csv")
    leaks = near_duplicates.run_leaks({"train": out / "train.csv", "val": out / "val.csv", "test": out / "test.csv"},
                                      [out / "fl.csv", out / "ft.csv"], out / "leaks.csv", DEFAULT)
    same = leaks[leaks["path_b"] == str(root / "test" / "same.png")]
    assert same[["kind", "distance"]].values.tolist() == [["identical", 0]]
    assert same["sha256"].iloc[0] == file_sha256(source)


def test_the_leak_check_applies_each_policy_to_its_kind_and_leaves_the_list(tmp_path):
    root, out = tmp_path / "data", tmp_path / "index"
    planted(root)
    index_all(root, out)
    near_duplicates.run([out / "train.csv", out / "val.csv"], out / "fl.csv")
    near_duplicates.run([out / "test.csv"], out / "ft.csv")
    splits = {"train": out / "train.csv", "val": out / "val.csv", "test": out / "test.csv"}
    leaks_csv, marker = out / "leaks.csv", out / "checked" / "leaks.json"
    near_duplicates.run_leaks(splits, [out / "fl.csv", out / "ft.csv"], leaks_csv, DEFAULT)  # lists, never fails
    listed = leaks_csv.read_bytes()
    # near pairs under data.near_duplicates.on_leak: the message names that key, and the file
    with pytest.raises(DataError, match=r"near-duplicate image pair.*listed in .*leaks.csv.*"
                                        r"\(data.near_duplicates.on_leak is 'error'") as caught:
        near_duplicates.run_check(leaks_csv, marker, "warn", "error", DEFAULT)
    assert "data.on_leak is" not in str(caught.value) and " more" in str(caught.value)
    assert not marker.exists() and leaks_csv.read_bytes() == listed
    # both kinds under data.on_leak: one error that names both, each with its first pairs
    with pytest.raises(DataError, match=r"4 image pair\(s\) with identical content.*==.*; "
                                        r"\d+ near-duplicate image pair\(s\).*~.*\(data.on_leak is 'error'"):
        near_duplicates.run_check(leaks_csv, marker, "error", None, DEFAULT)
    checked = near_duplicates.run_check(leaks_csv, marker, "warn", None, DEFAULT)
    assert checked["near"] > 0 and checked["identical"] == 4 and read_json(marker) == checked
    # a list made at a larger distance: today's distance counts (none: identical pairs alone)
    assert near_duplicates.run_check(leaks_csv, marker, "warn", "error", None)["near"] == 0
    distances = tables.read_leaks(leaks_csv).query("kind == 'near'")["distance"]
    within = near_duplicates.run_check(leaks_csv, marker, "warn", "warn", int(distances.median()))["near"]
    assert within == (distances <= int(distances.median())).sum() and 0 < within
    # without a distance: the identical pairs alone (the val and test copies of one kind)
    leaks = near_duplicates.run_leaks(splits, [], leaks_csv, None)
    assert len(leaks) == 4 and set(leaks["kind"]) == {"identical"}
    near_duplicates.run_check(leaks_csv, marker, "warn", "error", None)
    with pytest.raises(DataError, match="identical content"):
        near_duplicates.run_check(leaks_csv, marker, "error", "warn", None)


def test_fingerprints_come_from_the_record_for_known_contents(tmp_path, monkeypatch):
    root, out = tmp_path / "data", tmp_path / "index"
    planted(root)
    index_all(root, out)
    record = tmp_path / "record.tsv"
    first = near_duplicates.run([out / "train.csv", out / "val.csv"], out / "f1.csv", record)
    decoded = []
    monkeypatch.setattr(near_duplicates, "open_image", lambda path: decoded.append(path) or photo(0))
    again = near_duplicates.run([out / "train.csv", out / "val.csv", out / "test.csv"], out / "f2.csv", record)
    # only test/'s distinct photos are new (its planted copies have the content of val/'s)
    assert len(decoded) == again["sha256"].nunique() - first["sha256"].nunique() == 4
    assert (again.set_index("sha256").loc[first["sha256"]].reset_index() == first).all().all()


def test_near_duplicates_stay_in_one_fold_and_other_images_keep_their_folds(tmp_path):
    root, out = tmp_path / "data", tmp_path / "index"
    copies = planted(root, per_class=8)
    index_all(root, out)
    near_duplicates.run([out / "train.csv", out / "val.csv"], out / "fl.csv")
    plain = folds.run(out / "train.csv", out / "val.csv", out / "classes.csv", out / "plain.csv", 3, 0)
    grouped = folds.run(out / "train.csv", out / "val.csv", out / "classes.csv", out / "grouped.csv", 3, 0,
                        out / "fl.csv", DEFAULT)
    fold_of = dict(zip(grouped["path"], grouped["fold"]))
    val_copies = {copy: original for copy, original in copies.items() if "/val/" in copy}
    assert all(fold_of[copy] == fold_of[original] for copy, original in val_copies.items())
    assert any(dict(zip(plain["path"], plain["fold"]))[c] != dict(zip(plain["path"], plain["fold"]))[o]
               for c, o in val_copies.items())  # by content alone, some pairs were split
    # without near-duplicates (no distance), the folds are those made by content, byte for byte
    folds.run(out / "train.csv", out / "val.csv", out / "classes.csv", out / "none.csv", 3, 0, out / "fl.csv", None)
    assert (out / "none.csv").read_bytes() == (out / "plain.csv").read_bytes()


def test_a_singleton_keeps_its_fold_key():
    frame = pd.DataFrame({"path": ["a", "b", "c"], "sha256": ["3" * 64, "1" * 64, "2" * 64],
                          "label": ["x", "x", "x"]})
    fingerprints = pd.DataFrame({"sha256": ["1" * 64, "2" * 64, "3" * 64],
                                 "phash": ["0" * 16, "f" * 16, "0" * 15 + "3"],
                                 "phash_mirror": ["0" * 16, "f" * 16, "0" * 15 + "3"]})
    groups = near_duplicates.near_groups(frame, fingerprints, 2)
    assert groups.to_dict() == {"3" * 64: "1" * 64, "1" * 64: "1" * 64, "2" * 64: "2" * 64}


def test_without_near_duplicates_the_grouped_folds_are_byte_for_byte_those_by_content(tmp_path):
    root, out = tmp_path / "data", tmp_path / "index"
    for n in range(30):
        split = "val" if n % 5 == 0 else "train"
        path = root / split / "abc"[n % 3] / f"p{n}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        photo(500 + n).save(path)
    (root / "test").mkdir()
    photo(999).save(root / "test" / "t.png")
    index_all(root, out)
    near_duplicates.run([out / "train.csv", out / "val.csv"], out / "fl.csv")
    folds.run(out / "train.csv", out / "val.csv", out / "classes.csv", out / "plain.csv", 3, 0)
    folds.run(out / "train.csv", out / "val.csv", out / "classes.csv", out / "grouped.csv", 3, 0, out / "fl.csv",
              DEFAULT)
    assert (out / "grouped.csv").read_bytes() == (out / "plain.csv").read_bytes()
