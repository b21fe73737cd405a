# K-fold cross-validation (cv.folds >= 2; README: Cross-validation). Each run (variant, seed)
# trains one model per fold with the train, select and predict rules, on the fold's own index
# files; the rules here make the folds and gather each run's fold models into its predictions.


rule folds:
    """Every labelled image (train/ and val/ pooled) with its fold, decided by content."""
    input:
        train=INDEX_FILES["train"],
        val=INDEX_FILES["val"],
        classes=INDEX_FILES["classes"],
    output:
        f"{INDEX}/folds.csv",
    log:
        "logs/folds.log",
    conda:
        CONDA_ENV
    params:
        folds=CV_FOLDS,
        seed=CFG["cv"]["seed"],
    shell:
        "imageclf folds --train-index {input.train:q} --val-index {input.val:q} "
        "--classes {input.classes:q} --out {output:q} --folds {params.folds} "
        "--seed {params.seed} --log-file {log:q}"


rule fold_index:
    """The index files of one fold's runs: the other folds to train on, this fold held out."""
    input:
        f"{INDEX}/folds.csv",
    output:
        train=f"{INDEX}/fold{{k}}/train.csv",
        val=f"{INDEX}/fold{{k}}/val.csv",
    log:
        "logs/fold_index/fold{k}.log",
    wildcard_constraints:
        k=r"\d+",
    conda:
        CONDA_ENV
    shell:
        "imageclf fold_index --folds-table {input:q} --fold {wildcards.k} "
        "--train-out {output.train:q} --val-out {output.val:q} --log-file {log:q}"


def fold_predictions(split):
    """An input function: one run's predictions of `split` by each of its fold models, fold 0
    first, with the test-time views of the wanted file's folder."""

    def paths(wildcards):
        return [
            f"{PRED_DIR}/fold{k}/{wildcards.views}{split}.csv".format(
                variant=wildcards.variant, seed=wildcards.seed
            )
            for k in range(CV_FOLDS)
        ]

    return paths


rule oof:
    """A run's out-of-fold predictions: every labelled image, predicted by the fold model that
    held it out."""
    input:
        folds=f"{INDEX}/folds.csv",
        predictions=fold_predictions("val"),
    output:
        f"{PRED_DIR}/{{views}}oof.csv",
    log:
        "logs/oof/{variant}/seed{seed}/{views}oof.log",
    wildcard_constraints:
        views=r"(tta-[a-z+]+/)?",
    conda:
        CONDA_ENV
    shell:
        "imageclf oof --folds-table {input.folds:q} --fold-predictions {input.predictions:q} "
        "--out {output:q} --log-file {log:q}"


rule fold_average:
    """A run's test predictions: the mean class probabilities of its fold models."""
    input:
        members=fold_predictions("test"),
        classes=INDEX_FILES["classes"],
    output:
        f"{PRED_DIR}/{{views}}test.csv",
    log:
        "logs/fold_average/{variant}/seed{seed}/{views}test.log",
    wildcard_constraints:
        views=r"(tta-[a-z+]+/)?",
    conda:
        CONDA_ENV
    shell:
        "imageclf fold_average --fold-predictions {input.members:q} --classes {input.classes:q} "
        "--out {output:q} --log-file {log:q}"
