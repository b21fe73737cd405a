# Data you can trust (docs/near_duplicates.md): the paths and helpers of audit.smk's rules, of
# cv.smk's folds rule (near-duplicates stay in one fold) and of the train rules (data.exclude).

from imageclf.core.config import audit_variant, run_exclusion
from imageclf.data.near_duplicates import CACHE_NAME as FINGERPRINT_RECORD

NEAR = CFG["data"]["near_duplicates"]
FINGERPRINTS = {side: f"{INDEX}/fingerprints_{side}.csv" for side in DATA_GROUPS}
AUDIT = {
    "issues": "results/audit/label_issues.csv",
    "gallery": "results/audit/gallery.png",
}
# what the default target makes of these: the leak list. The audit is asked for by name
# (snakemake results/audit/label_issues.csv) or by a variant that excludes its images: it refuses
# a run that learned nothing, which would fail the default target of a project that has one.
TRUST_TARGETS = [INDEX_FILES["leaks"]]


def near_distance_flag():
    """data.near_duplicates.distance as the stages take it (none: identical images only)."""
    return "none" if NEAR["distance"] is None else str(NEAR["distance"])


def folds_made_before_near_duplicates():
    """Whether folds.csv is current and was made before folds grouped near-duplicates: it exists,
    is newer than the labelled index, that index is current for the data, and the labelled
    fingerprints are missing or newer than it. Such folds are kept as they are until the labelled
    data change (a new input would rerun the folds job, and so every fold's training); the leaks
    stage still lists the near pairs."""
    folds = Path(f"{INDEX}/folds.csv")
    if not CV_FOLDS or not folds.is_file():
        return False
    made = folds.stat().st_mtime
    record = Path(FINGERPRINTS["labelled"])
    if record.is_file() and record.stat().st_mtime <= made:
        return False
    labelled = [Path(INDEX_FILES[split]) for split in ("train", "val")]
    if not all(path.is_file() and path.stat().st_mtime <= made for path in labelled):
        return False
    return is_demo(CFG) or index_is_current("labelled", DATA_STAMPS["labelled"])


def folds_group_near():
    """Whether the folds job keeps near-duplicates in one fold. Decided once, by the main process
    before any job (a cluster job's own Snakemake reads the decision: by then the files it is
    decided from may have changed)."""
    decision = Path(".snakemake/imageclf/folds_near_duplicates")
    if not workflow.is_main_process and decision.is_file():
        return decision.read_text().strip() == "1"
    group = (
        bool(CV_FOLDS)
        and NEAR["distance"] is not None
        and not folds_made_before_near_duplicates()
    )
    if workflow.is_main_process and CV_FOLDS:
        decision.parent.mkdir(parents=True, exist_ok=True)
        decision.write_text("1\n" if group else "0\n")
    return group


FOLDS_GROUP_NEAR = folds_group_near()


def folds_near_input(wildcards):
    """The folds rule's extra input: the labelled fingerprints, when it groups near-duplicates."""
    return {"fingerprints": FINGERPRINTS["labelled"]} if FOLDS_GROUP_NEAR else {}


def folds_near_params():
    """The folds rule's extra param: none when it does not group near-duplicates, so folds made
    before they existed, and projects with data.near_duplicates.distance null, keep their params.
    """
    return {"near_distance": NEAR["distance"]} if FOLDS_GROUP_NEAR else {}


# the folds command's flags for it (command text is no rerun trigger; the param above is)
FOLDS_NEAR_FLAGS = (
    f"--fingerprints {FINGERPRINTS['labelled']} --near-distance {NEAR['distance']} "
    if FOLDS_GROUP_NEAR
    else ""
)


def exclude_input(wildcards):
    """A run's data.exclude file, as an input of its training: none for a run that leaves nothing
    out, so other runs keep their inputs."""
    spec = run_exclusion(CFG, wildcards.variant)
    return {"exclude": spec["file"]} if spec else {}


def audited_runs():
    """(variant, seed) of each run the audit reads: audit.variant's, at audit.seed or every seed."""
    seed = CFG["audit"]["seed"]
    return [(audit_variant(CFG), s) for s in ([seed] if seed is not None else SEEDS)]
