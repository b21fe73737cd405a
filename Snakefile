# Folder-per-class images -> trained variants -> selected checkpoints -> predictions ->
# leaderboard submission, ablation table and plots. See README.md.

import os

from snakemake.utils import min_version

min_version("9.0")


# The defaults sit next to this file; --configfile overlays are merged over them.
configfile: os.path.join(workflow.basedir, "config.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/gpus.smk"
include: "workflow/rules/stamps.smk"
include: "workflow/rules/manifest.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/index.smk"
include: "workflow/rules/trust.smk"
include: "workflow/rules/audit.smk"
include: "workflow/rules/weights.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/select.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/submission.smk"
include: "workflow/rules/ablation.smk"


if CV_FOLDS:

    include: "workflow/rules/cv.smk"


rule all:
    default_target: True
    input:
        "results/submission.csv",
        rules.ablation_table.input,
        TRUST_TARGETS,
        FULL_FIT_PREDICTIONS,
