rule submission:
    """results/submission.csv and results/submission.zip (prediction.csv inside)."""
    input:
        predictions=SUBMITTED_PRED["test"],
        test=INDEX_FILES["test"],
        classes=INDEX_FILES["classes"],
        selections=submitted_selections(),
        # what a run needs, as for the ablation table (MODEL_FILES); the models are checked
        # against their configurations
        runs=submitted_models("run"),
        models=submitted_models("model"),
        configs=submitted_models("config"),
        # near-duplicates across splits under data.on_leak: error stop the submission; ancient,
        # so that a new leak list or check (a changed policy) reruns nothing that passes
        leak_check=ancient(paths.LEAK_CHECK),
    output:
        csv="results/submission.csv",
        zip="results/submission.zip",
    log:
        "logs/submission.log",
    conda:
        CONDA_ENV
    params:
        **version_params("submission"),
    shell:
        "imageclf submission --predictions {input.predictions:q} --test-index {input.test:q} "
        "--classes {input.classes:q} --selections {input.selections:q} "
        "--models {input.models:q} --run-configs {input.configs:q} "
        "--out-csv {output.csv:q} --out-zip {output.zip:q} --log-file {log:q}"
