rule submission:
    """results/submission.csv and results/submission.zip (prediction.csv inside)."""
    input:
        predictions=SUBMITTED_PRED["test"],
        test=INDEX_FILES["test"],
        classes=INDEX_FILES["classes"],
        selections=submitted_selections(),
    output:
        csv="results/submission.csv",
        zip="results/submission.zip",
    log:
        "logs/submission.log",
    conda:
        CONDA_ENV
    shell:
        "imageclf submission --predictions {input.predictions:q} --test-index {input.test:q} "
        "--classes {input.classes:q} --selections {input.selections:q} "
        "--out-csv {output.csv:q} --out-zip {output.zip:q} --log-file {log:q}"
