# K-fold cross-validation (cv.folds >= 2; README: Cross-validation). Each run (variant, seed)
# trains one model per fold with the train, select and predict rules, on the fold's own index
# files; the rules here make the folds and gather each run's fold models into its predictions.


rule folds:
    """Every labelled image (train/ and val/ pooled) with its fold, decided by content."""
    input:
        unpack(folds_near_input),  # trust.smk: near-duplicates stay in one fold
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
        **version_params("folds"),
        **folds_near_params(),
        folds=CV_FOLDS,
        seed=CFG["cv"]["seed"],
    shell:
        "imageclf folds --train-index {input.train:q} --val-index {input.val:q} "
        "--classes {input.classes:q} --out {output:q} --folds {params.folds} "
        f"--seed {{params.seed}} {FOLDS_NEAR_FLAGS}--log-file {{log:q}}"


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
    params:
        **version_params("fold_index"),
    shell:
        "imageclf fold_index --folds-table {input:q} --fold {wildcards.k} "
        "--train-out {output.train:q} --val-out {output.val:q} --log-file {log:q}"


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
    params:
        **version_params("oof"),
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
    params:
        **version_params("fold_average"),
    shell:
        "imageclf fold_average --fold-predictions {input.members:q} --classes {input.classes:q} "
        "--out {output:q} --log-file {log:q}"


# cv.full_fit: each run's model trained on every labelled image (README: Cross-validation).
if FULL_FIT:

    rule full_fit_index:
        """Every labelled image to train on, none held out."""
        input:
            f"{INDEX}/folds.csv",
        output:
            f"{INDEX}{FULL_FIT}/train.csv",
        log:
            "logs/fold_index/full.log",
        conda:
            CONDA_ENV
        params:
            **version_params("fold_index"),
        shell:
            "imageclf fold_index --folds-table {input:q} --train-out {output:q} "
            "--log-file {log:q}"

    rule full_fit_config:
        """A run's full fit's run config: its fold models' config, trained for the median of
        their selected epochs at the learning rates they had (imageclf/training/full_fit.py).
        """
        input:
            config=f"{RUN_DIR}/fold0/config.json",
            histories=lambda wildcards: run_files(
                wildcards.variant, wildcards.seed, "history"
            ),
            selections=lambda wildcards: run_files(
                wildcards.variant, wildcards.seed, "selection"
            ),
        output:
            in_report(
                f"{RUN}/config.json",
                "run_config",
                "configuration",
                labels={"variant": "{variant}", "seed": "{seed}", "fold": "{fold}"},
            ),
        log:
            "logs/run_config/{variant}/seed{seed}{fold}.log",
        wildcard_constraints:
            fold=FULL_FIT,
        localrule: True
        conda:
            CONDA_ENV
        params:
            **version_params("full_fit_config"),
        shell:
            "imageclf full_fit_config --run-config {input.config:q} "
            "--histories {input.histories:q} --selections {input.selections:q} "
            "--out {output:q} --log-file {log:q}"

    use rule train as full_fit with:
        input:
            unpack(lambda wildcards: cache_inputs(wildcards, ["train"])),
            unpack(weights_input),
            unpack(exclude_input),
            config=f"{RUN}/config.json",
            train=index_file(lambda wildcards: "train"),
            classes=INDEX_FILES["classes"],
        output:
            history=f"{RUN}/history.csv",
            run=f"{RUN}/run.json",
            model=f"{RUN}/model.pt",
        wildcard_constraints:
            fold=FULL_FIT,
