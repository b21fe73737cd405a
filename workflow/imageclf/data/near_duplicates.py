"""Near-duplicates: the same photo resized, re-encoded, slightly cropped or mirrored.

A perceptual fingerprint per image content (`phash`): the image as `open_image` decodes it, in
grey, resized to 32 x 32 (Lanczos), its 2-D DCT-II, and the 8 x 8 lowest frequencies compared
with their median: 64 bits. The fingerprint of the mirrored image (`phash_mirror`) comes from the
same coefficients: mirroring the columns flips the sign of every odd horizontal frequency. Two
images are near-duplicates when the Hamming distance between their fingerprints, the second one
mirrored or not, is at most `data.near_duplicates.distance` (docs/near_duplicates.md: the default
and its measured precision and recall).

Two stages:
- `fingerprints` (one job per side: labelled, test): one row per distinct image content of that
  side's index files, `fingerprints_<side>.csv`. A record in .snakemake/imageclf/ keeps every
  content's fingerprint by its SHA-256, so only new or changed images are decoded again.
- `leaks`: every pair of images in two different splits that are identical (same SHA-256) or
  near (within the distance), with their kind and distance: leaks.csv. It lists, never fails.
- `check_leaks`: leaks.csv's pairs under data.on_leak (identical) and data.near_duplicates.on_leak
  (near). A pair under 'error' fails the check, which the submission and the ablation table wait
  for; the failed check removes its own marker alone, so leaks.csv stays to be read.

The cross-validation folds read the labelled fingerprints (folds.py: near_groups), so that a
group of near-duplicates stays in one fold.
"""

from __future__ import annotations

import argparse
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..core import tables
from ..core.errors import DataError
from ..core.io_utils import atomic_path, write_json
from ..core.logs import add_log_argument, setup_logging
from .images import open_image

log = logging.getLogger("imageclf.near_duplicates")

# What this stage writes, as a version: raised by a change that alters its outputs, and by nothing else
# (core/stages.py). Raising it reruns this stage and everything downstream, on every project.
RESULTS_VERSION = 1

SIDE = 32  # the grey image the DCT is taken of
LOW = 8  # the LOW x LOW lowest frequencies make the 64 bits
# The cache record's name holds the method: a changed method never reads another's fingerprints.
CACHE_NAME = f"fingerprints_dct{SIDE}x{LOW}.tsv"
BITS = LOW * LOW


def dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II as a matrix: dct(x) = M @ x."""
    k = np.arange(n)[:, None]
    matrix = np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n)) * np.sqrt(2 / n)
    matrix[0] /= np.sqrt(2)
    return matrix


DCT = dct_matrix(SIDE)
# Mirroring the columns multiplies the coefficient of horizontal frequency v by (-1)^v.
MIRROR_SIGNS = np.where(np.arange(LOW) % 2, -1.0, 1.0)[None, :]


def bits_to_int(bits: np.ndarray) -> int:
    return int("".join("1" if b else "0" for b in bits.ravel()), 2)


def phash(image: Image.Image) -> tuple[int, int]:
    """(fingerprint, fingerprint of the mirrored image) of a decoded image, as 64-bit integers."""
    grey = np.asarray(image.convert("L").resize((SIDE, SIDE), Image.Resampling.LANCZOS), dtype=np.float64)
    low = (DCT @ grey @ DCT.T)[:LOW, :LOW]
    mirrored = low * MIRROR_SIGNS
    return bits_to_int(low > np.median(low)), bits_to_int(mirrored > np.median(mirrored))


def as_hex(value: int) -> str:
    return f"{value:016x}"


def as_array(hex_values) -> np.ndarray:
    return np.array([int(value, 16) for value in hex_values], dtype=np.uint64)


# -- the fingerprints stage -------------------------------------------------------------------

def read_record(path: Path) -> dict[str, tuple[str, str]]:
    """The cache record: sha256 -> (phash, phash_mirror); empty when missing or unreadable."""
    if not path.is_file():
        return {}
    record = {}
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and len(parts[0]) == 64:
            record[parts[0]] = (parts[1], parts[2])
    return record


def write_record(path: Path, new: dict[str, tuple[str, str]]) -> None:
    """Add `new` to the record (read again first: two jobs may add to it at once)."""
    if not new:
        return
    record = {**read_record(path), **new}
    with atomic_path(path) as tmp:
        Path(tmp).write_text("".join(f"{sha}\t{p}\t{m}\n" for sha, (p, m) in sorted(record.items())))


def fingerprint_index(index: pd.DataFrame, record_path=None, threads: int = 1) -> pd.DataFrame:
    """One row per distinct content of `index` (path, sha256): sha256, phash, phash_mirror, sorted
    by sha256. Contents in the record at `record_path` are not decoded again."""
    record_path = Path(record_path) if record_path else None
    record = read_record(record_path) if record_path else {}
    first_path = index.drop_duplicates("sha256").set_index("sha256")["path"]
    todo = [sha for sha in first_path.index if sha not in record]

    def one(sha):
        try:
            p, m = phash(open_image(first_path[sha]))
        except OSError as error:
            raise DataError(f"{first_path[sha]}: cannot read ({error})") from error
        return sha, (as_hex(p), as_hex(m))

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        new = dict(pool.map(one, todo))
    log.info("%d distinct images: %d fingerprinted, %d from the record", len(first_path), len(new),
             len(first_path) - len(new))
    if record_path:
        write_record(record_path, new)
    record.update(new)
    rows = [(sha, *record[sha]) for sha in sorted(first_path.index)]
    return pd.DataFrame(rows, columns=list(tables.FINGERPRINTS))


def run(index_files, out_csv, record_path=None, threads: int = 1) -> pd.DataFrame:
    """The `fingerprints` stage: every distinct image of these index files, fingerprinted."""
    index = pd.concat([tables.read_index(path) for path in index_files], ignore_index=True)
    frame = fingerprint_index(index, record_path, threads)
    tables.write_fingerprints(out_csv, frame)
    return frame


# -- distances and pairs ----------------------------------------------------------------------

def popcount(values: np.ndarray) -> np.ndarray:
    return np.bitwise_count(values).astype(np.int16)


def distances(a: pd.DataFrame, b: pd.DataFrame) -> np.ndarray:
    """len(a) x len(b) Hamming distances, the smaller of direct and mirrored (frames with phash
    and phash_mirror as hex)."""
    ap, am = as_array(a["phash"])[:, None], as_array(a["phash_mirror"])[:, None]
    bp, bm = as_array(b["phash"])[None, :], as_array(b["phash_mirror"])[None, :]
    return np.minimum(np.minimum(popcount(ap ^ bp), popcount(ap ^ bm)), popcount(am ^ bp))


def close_pairs(a: pd.DataFrame, b: pd.DataFrame | None, max_distance: int, chunk: int = 2048):
    """(i, j, distance) of rows i of a and j of b (of a itself, i < j, when b is None) within
    max_distance, in chunks so memory stays small (a 20,000 x 20,000 search takes seconds)."""
    other = a if b is None else b
    found = []
    for start in range(0, len(a), chunk):
        block = distances(a.iloc[start : start + chunk], other)
        rows, cols = np.nonzero(block <= max_distance)
        for i, j in zip(rows.tolist(), cols.tolist()):
            if b is None and j <= start + i:
                continue
            found.append((start + i, j, int(block[i, j])))
    return found


def with_fingerprints(frame: pd.DataFrame, fingerprints: pd.DataFrame) -> pd.DataFrame:
    """The index rows with their content's fingerprint (an image without one is an error)."""
    merged = frame.merge(fingerprints, on="sha256", how="left")
    missing = merged["phash"].isna()
    if missing.any():
        raise DataError(f"{merged.loc[missing, 'path'].iloc[0]}: no fingerprint in the fingerprints file; "
                        "rerun the fingerprints rule")
    return merged


def near_groups(index: pd.DataFrame, fingerprints: pd.DataFrame, max_distance: int | None) -> pd.Series:
    """Each distinct content (sha256) of `index` -> its group's key: the smallest sha256 of the
    images linked to it by chains of near pairs. A content without near-duplicates is its own
    key, so folds made by group keys equal folds made by content where there are none."""
    distinct = index.drop_duplicates("sha256")[["sha256"]].reset_index(drop=True)
    parent = list(range(len(distinct)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if max_distance is not None and len(distinct) > 1:
        for i, j, _ in close_pairs(with_fingerprints(distinct, fingerprints), None, max_distance):
            parent[root(i)] = root(j)
    shas = distinct["sha256"].tolist()
    members: dict[int, list[str]] = {}
    for i, sha in enumerate(shas):
        members.setdefault(root(i), []).append(sha)
    return pd.Series({sha: min(group) for group in members.values() for sha in group}, name="group")


def find_leaks(frames: dict[str, pd.DataFrame], fingerprints: pd.DataFrame | None,
               max_distance: int | None) -> pd.DataFrame:
    """Every pair of images in two different splits: identical (same SHA-256, distance 0) or near
    (another content within max_distance). One row per pair of files, splits in the given order."""
    columns = list(tables.LEAKS)
    rows = []
    names = list(frames)
    for x, split_a in enumerate(names):
        for split_b in names[x + 1 :]:
            a, b = frames[split_a].reset_index(drop=True), frames[split_b].reset_index(drop=True)
            same = a.reset_index().merge(b.reset_index(), on="sha256", suffixes=("_a", "_b"))
            for row in same.itertuples():
                rows.append((row.sha256, split_a, row.path_a, split_b, row.path_b, "identical", 0, row.sha256))
            if fingerprints is None or max_distance is None or not len(a) or not len(b):
                continue
            fa, fb = with_fingerprints(a, fingerprints), with_fingerprints(b, fingerprints)
            for i, j, distance in close_pairs(fa, fb, max_distance):
                if fa.at[i, "sha256"] != fb.at[j, "sha256"]:
                    rows.append((fa.at[i, "sha256"], split_a, fa.at[i, "path"], split_b, fb.at[j, "path"], "near",
                                 distance, fb.at[j, "sha256"]))
    leaks = pd.DataFrame(rows, columns=columns)
    return leaks.sort_values(["kind", "distance", "path_a", "path_b"], kind="stable").reset_index(drop=True)


# each kind of pair: what it is, and how one pair reads
LEAK_KINDS = {"identical": ("image pair(s) with identical content", "{a} == {b}"),
              "near": ("near-duplicate image pair(s)", "{a} ~ {b} (distance {distance})")}
LISTED = 3  # pairs a message names; the log lists up to LOGGED
LOGGED = 50


def leak_policies(on_leak: str, near_on_leak: str | None) -> dict[str, tuple[str, str]]:
    """Each kind's policy (warn or error) and the config key it comes from: data.on_leak for
    identical pairs, data.near_duplicates.on_leak for near ones (null: data.on_leak's)."""
    near_key = "data.near_duplicates.on_leak" if near_on_leak else "data.on_leak"
    return {"identical": (on_leak, "data.on_leak"), "near": (near_on_leak or on_leak, near_key)}


def pair_problems(leaks: pd.DataFrame, policies: dict, where: str) -> list[str]:
    """Each kind of `leaks` under its (policy, key) of `policies`: a kind under 'warn' is logged
    as a warning, one under 'error' comes back as a message (its first pairs named, up to LOGGED
    listed in the log)."""
    problems = []
    for kind, (policy, key) in policies.items():
        pairs = leaks[leaks["kind"] == kind]
        what, pair = LEAK_KINDS[kind]
        if not len(pairs):
            log.info("no %s across splits", what.replace(" pair(s)", "s"))
            continue
        named = [pair.format(a=r.path_a, b=r.path_b, distance=r.distance) for r in pairs.head(LOGGED).itertuples()]
        more = f" and {len(pairs) - LISTED} more" if len(pairs) > LISTED else ""
        message = f"{len(pairs)} {what} across splits ({where}): {'; '.join(named[:LISTED])}{more}"
        if policy != "error":
            log.warning(message)
            continue
        for line in named:
            log.info("  %s", line)
        if len(pairs) > LOGGED:
            log.info("  ... %d more", len(pairs) - LOGGED)
        problems.append(f"{message} ({key} is 'error'; set it to 'warn' to continue"
                        + (", or lower data.near_duplicates.distance)" if kind == "near" else ")"))
    return problems


def check_pairs(leaks: pd.DataFrame, policies: dict, where: str) -> None:
    """pair_problems, raised as one DataError."""
    problems = pair_problems(leaks, policies, where)
    if problems:
        raise DataError("; ".join(problems))


def run_leaks(index_files: dict, fingerprint_files, out_csv, max_distance: int | None) -> pd.DataFrame:
    """The `leaks` stage: every identical or near pair of images across splits into leaks.csv.
    index_files: split -> index CSV, in the order the pairs name them (train, val, test). It lists
    them and never fails on them: `check_leaks` applies data.on_leak."""
    frames = {split: tables.read_index(path) for split, path in index_files.items()}
    fingerprints = None
    if fingerprint_files:
        fingerprints = pd.concat([tables.read_fingerprints(path) for path in fingerprint_files], ignore_index=True)
        fingerprints = fingerprints.drop_duplicates("sha256")
    leaks = find_leaks(frames, fingerprints, max_distance)
    tables.write_leaks(out_csv, leaks)
    counts = leaks["kind"].value_counts()
    log.info("%d identical and %d near-duplicate pair(s) across splits (distance at most %s): %s",
             counts.get("identical", 0), counts.get("near", 0), max_distance, out_csv)
    return leaks


def run_check(leaks_csv, out, on_leak: str = "warn", near_on_leak: str | None = None,
              max_distance: int | None = None) -> dict:
    """The `check_leaks` stage: the pairs of leaks.csv under data.on_leak and
    data.near_duplicates.on_leak (leak_policies); a passed check writes the marker `out` with its
    counts. Near pairs beyond max_distance (a list made at a larger distance) do not count."""
    leaks = listed_pairs(leaks_csv, max_distance)
    check_pairs(leaks, leak_policies(on_leak, near_on_leak), f"listed in {leaks_csv}")
    counts = leaks["kind"].value_counts()
    checked = {"leaks": str(leaks_csv), "identical": int(counts.get("identical", 0)),
               "near": int(counts.get("near", 0)), "on_leak": on_leak, "near_on_leak": near_on_leak}
    write_json(out, checked)
    return checked


def listed_pairs(leaks_csv, max_distance: int | None) -> pd.DataFrame:
    """leaks.csv's pairs that the distance of today's config counts: every identical pair, the
    near ones within max_distance (none when it is None)."""
    leaks = tables.read_leaks(leaks_csv)
    near = leaks["kind"] == "near"
    return leaks[~near | (leaks["distance"] <= (max_distance if max_distance is not None else -1))]


def distance_argument(text: str) -> int | None:
    return None if text in ("", "none", "None", "null") else int(text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="imageclf fingerprints", description=run.__doc__)
    parser.add_argument("--index", nargs="+", required=True, help="index CSV files (train.csv val.csv, or test.csv)")
    parser.add_argument("--out", required=True, help="fingerprints_<side>.csv")
    parser.add_argument("--record", default=None, help="the record of known fingerprints (.snakemake/imageclf/...)")
    parser.add_argument("--threads", type=int, default=1)
    add_log_argument(parser)
    args = parser.parse_args(argv)
    setup_logging(args.log_file)
    run(args.index, args.out, args.record, args.threads)


def main_leaks(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="imageclf leaks", description=run_leaks.__doc__)
    parser.add_argument("--train-index", required=True)
    parser.add_argument("--val-index", required=True)
    parser.add_argument("--test-index", required=True)
    parser.add_argument("--fingerprints", nargs="*", default=[], help="fingerprints_<side>.csv (none: identical pairs only)")
    parser.add_argument("--out", required=True, help="leaks.csv")
    parser.add_argument("--near-distance", type=distance_argument, default=None,
                        help="data.near_duplicates.distance (none: identical pairs only)")
    add_log_argument(parser)
    args = parser.parse_args(argv)
    setup_logging(args.log_file)
    run_leaks({"train": args.train_index, "val": args.val_index, "test": args.test_index}, args.fingerprints,
              args.out, args.near_distance)


def main_check(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="imageclf check_leaks", description=run_check.__doc__)
    parser.add_argument("--leaks", required=True, help="leaks.csv (the leaks stage's)")
    parser.add_argument("--out", required=True, help="the marker of a passed check (JSON)")
    parser.add_argument("--on-leak", choices=["warn", "error"], default="warn", help="data.on_leak")
    parser.add_argument("--near-on-leak", choices=["warn", "error", "none"], default="none",
                        help="data.near_duplicates.on_leak (none: as data.on_leak)")
    parser.add_argument("--near-distance", type=distance_argument, default=None,
                        help="data.near_duplicates.distance (none: identical pairs only)")
    add_log_argument(parser)
    args = parser.parse_args(argv)
    setup_logging(args.log_file)
    run_check(args.leaks, args.out, args.on_leak, None if args.near_on_leak == "none" else args.near_on_leak,
              args.near_distance)
