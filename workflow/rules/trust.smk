# Data you can trust (docs/near_duplicates.md): the paths and helpers of audit.smk's rules, of
# cv.smk's folds rule (near-duplicates stay in one fold) and of the train rules (data.exclude).

import sys

from imageclf.core.config import audit_variant, run_exclusion
from imageclf.core.errors import DataError
from imageclf.data.near_duplicates import CACHE_NAME as FINGERPRINT_RECORD
from imageclf.data.near_duplicates import check_pairs, leak_policies, listed_pairs

NEAR = CFG["data"]["near_duplicates"]
FINGERPRINTS = {side: paths.FINGERPRINTS.format(side=side) for side in DATA_GROUPS}
AUDIT = {"issues": paths.LABEL_ISSUES, "gallery": paths.AUDIT_GALLERY}
# what the default target makes of these: the leak list. The audit is asked for by name
# (snakemake results/audit/label_issues.csv) or by a variant that excludes its images: it refuses
# a run that learned nothing, which would fail the default target of a project that has one.
TRUST_TARGETS = [INDEX_FILES["leaks"]]


def near_distance_flag():
    """data.near_duplicates.distance as the stages take it (none: identical images only)."""
    return "none" if NEAR["distance"] is None else str(NEAR["distance"])


def leak_list_is_current():
    """Whether leaks.csv exists, is newer than every input of the leaks job, and the index is
    current for its data (their stamps) and made how the config says (a changed
    data.val_fraction gives another check key, whose marker is not there yet)."""
    inputs = [INDEX_FILES[split] for split in ("train", "val", "test")]
    if NEAR["distance"] is not None:
        inputs += list(FINGERPRINTS.values())
    if not made_after(INDEX_FILES["leaks"], inputs):
        return False
    return is_demo(CFG) or all(
        index_is_current(group, DATA_STAMPS[group])
        and Path(check_marker(group)).is_file()
        for group in DATA_GROUPS
    )


# Snakemake parses this file for its maintenance calls too; they must not be stopped by the data.
MAINTENANCE_FLAGS = {"--unlock", "--cleanup-metadata", "--cm", "--delete-all-output"}


def leaks_pass_their_policy():
    """Before any job, under an 'error' of data.on_leak or data.near_duplicates.on_leak: the
    pairs of that kind that a current leaks.csv lists stop Snakemake here, whatever the target.
    check_leaks stops the run that makes the list; this stops every run after it (the failed
    check's marker is gone, and an up-to-date submission would not ask for it again), and a
    switch to 'error' on a finished project, before any job."""
    policies = leak_policies(CFG["data"]["on_leak"], NEAR["on_leak"])
    errors = {kind: rule for kind, rule in policies.items() if rule[0] == "error"}
    if not workflow.is_main_process or not errors or MAINTENANCE_FLAGS & set(sys.argv):
        return
    if not leak_list_is_current():
        return
    leaks = INDEX_FILES["leaks"]
    try:
        listed = listed_pairs(leaks, NEAR["distance"])
    except DataError:
        return  # unreadable, or of an older format: the leaks and check_leaks jobs say so
    try:
        check_pairs(listed, errors, f"listed in {leaks}")
    except DataError as error:
        raise WorkflowError(str(error))


leaks_pass_their_policy()


def folds_are_current():
    """Whether folds.csv exists, is newer than the labelled index, and that index is current for
    the labelled data (their stamp)."""
    if not made_after(f"{INDEX}/folds.csv", [INDEX_FILES["train"], INDEX_FILES["val"]]):
        return False
    return is_demo(CFG) or index_is_current("labelled", DATA_STAMPS["labelled"])


def folds_from_before_near_duplicates():
    """Whether folds.csv was made before folds grouped near-duplicates, and is kept: a new input
    would rerun the folds job, and so every fold's training. Decided by the main process the first
    time this release sees the project, and kept in .snakemake/imageclf/ until the labelled data
    change (a cluster job's own Snakemake reads the record: by then the files it is decided from
    may have changed). The leaks stage still lists the near pairs of such folds."""
    record = Path(".snakemake/imageclf/folds_near_duplicates")
    recorded = record.read_text().strip() if record.is_file() else None
    if not workflow.is_main_process or not CV_FOLDS:
        return recorded == "kept"
    # a project seen first by this release, or kept before: kept while its folds are current
    kept = recorded in (None, "kept") and folds_are_current()
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text("kept\n" if kept else "grouped\n")
    return kept


def folds_group_near():
    """Whether the folds job keeps near-duplicates in one fold."""
    return (
        bool(CV_FOLDS)
        and NEAR["distance"] is not None
        and not folds_from_before_near_duplicates()
    )


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
