# Stamps of what lies outside the workflow's files: a content digest of each side of a user's
# data set and of each local weights file, brought up to date while Snakemake builds the DAG,
# and the checks that stop a run before any job (README: Only stale stages rerun).
import hashlib
from pathlib import Path

from imageclf.data.datafiles import update_data_stamp, update_file_stamp
from imageclf.data.folds import check_fold_count
from imageclf.models.weights import is_local_file, stamp_name

# What the labelled side (train/ and val/) and the test side (test/) of the data set hold: a
# digest of their contents, rewritten only when it changes (imageclf/data/datafiles.py).
DATA_GROUPS = {"labelled": ("train", "val"), "test": ("test",)}


def data_stamps():
    """Bring the stamp of each side of a user's data set up to date, before the DAG is built
    (Snakemake takes stock of the files in a folder once: a stamp made while it builds the DAG
    could look missing). Once per invocation; a cluster job's own Snakemake only reads them.
    Returns the stamps and the content digests they hold.
    """
    if is_demo(CFG):
        return {}, {}
    root = Path(CFG["data"]["root"])  # a folder: checked_config made sure
    stamps = {group: f"{INDEX}/data_{group}.sha256" for group in DATA_GROUPS}
    digests = {}
    for group, splits in DATA_GROUPS.items():
        if not workflow.is_main_process:
            stamp = Path(stamps[group])
            digests[group] = stamp.read_text().strip() if stamp.is_file() else ""
            continue
        # the test labels are watched by content too (cp -p keeps an old mtime)
        labels = test_labels_input() if group == "test" else []
        digests[group] = update_data_stamp(
            root,
            splits,
            stamps[group],
            f"{paths.STATE}/data_{group}.tsv",
            extra_files=labels,
        )
    return stamps, digests


DATA_STAMPS, DATA_DIGESTS = data_stamps()


def local_weights_stamps():
    """A content stamp for each local model.weights file, brought up to date before the DAG is
    built: replacing the file retrains the variants that use it; a touch retrains nothing.
    """
    weights = {
        variant_sections(CFG, variant)["model"]["weights"] for variant in VARIANTS
    }
    stamps = {}
    for path in sorted(p for p in weights if is_local_file(p)):
        stamps[path] = f"{WEIGHTS}/local/{stamp_name(path)}"
        if workflow.is_main_process:
            update_file_stamp(
                path, stamps[path], f"{paths.STATE}/weights_{stamp_name(path)}"
            )
    return stamps


LOCAL_WEIGHTS_STAMPS = local_weights_stamps()


# The index outputs of each side of the data set, and the rule that checks that side first.
INDEX_OUTPUTS = {
    "labelled": ("train", "val", "classes"),
    "test": ("test", "summary"),
}


def checked_key(group):
    """What a check of `group` answers for: the data's contents (the test side's check also
    reads the labelled index) and how val/ is made. Its marker is named by it, so a check that
    passed stays passed when the data come back to what they were."""
    parts = [DATA_DIGESTS["labelled"], carved_val_flags()]
    if group == "test":
        parts.append(DATA_DIGESTS["test"])
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def check_marker(group):
    """The marker a passed check of `group` writes for today's data and config (checked_key)."""
    return f"{INDEX}/checked/{group}-{checked_key(group)}.json"


def made_after(path, inputs):
    """Whether the file `path` exists and every one of `inputs` exists and is not newer."""
    path = Path(path)
    if not path.is_file():
        return False
    made = path.stat().st_mtime
    return all(
        Path(source).is_file() and Path(source).stat().st_mtime <= made
        for source in inputs
    )


def index_is_current(group, stamp):
    """Whether a side's index files all exist and are newer than its data stamp."""
    files = [Path(INDEX_FILES[name]) for name in INDEX_OUTPUTS[group]]
    if not all(path.is_file() for path in files):
        return False
    return min(path.stat().st_mtime for path in files) >= Path(stamp).stat().st_mtime


def data_stamp(group):
    """The input that makes a group's index rerun exactly when its files change: the demo's
    folders (made by a rule), or the stamp of a user's data set, with the marker of its check
    (check_data or check_test_data): a data problem stops the run at the check, before the
    index job starts, so Snakemake never deletes the finished index. An index made before these
    checks existed, and still current, keeps the stamp alone as its input until its data
    change: a new input would rerun it, and every training after it.
    """

    def stamp(wildcards):
        if is_demo(CFG):
            return [
                getattr(rules.demo_data.output, split) for split in DATA_GROUPS[group]
            ]
        marker = check_marker(group)
        if Path(marker).is_file() or not index_is_current(group, DATA_STAMPS[group]):
            return [DATA_STAMPS[group], marker]
        return [DATA_STAMPS[group]]

    return stamp


def folds_fit_the_index():
    """Before any job: a cv.folds too large for a user's current labelled index stops Snakemake
    here, naming cv.folds, rather than failing (and so deleting) folds.csv. The demo's, or a
    stale index, is left to the folds job, which makes folds.csv anew anyway."""
    if not CV_FOLDS or is_demo(CFG) or not workflow.is_main_process:
        return
    if not index_is_current("labelled", DATA_STAMPS["labelled"]):
        return
    try:
        check_fold_count(CV_FOLDS, [INDEX_FILES["train"], INDEX_FILES["val"]])
    except ConfigError as error:
        raise WorkflowError(str(error))


folds_fit_the_index()
