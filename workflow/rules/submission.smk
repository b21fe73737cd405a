

rule submission:
    """results/submission.csv and results/submission.zip (prediction.csv inside)."""
    input:
        predictions=SUBMITTED_PRED["test"],
        test=INDEX_FILES["test"],
        classes=INDEX_FILES["classes"],
    output:
        csv="results/submission.csv",
        zip="results/submission.zip",
    log:
        "logs/submission.log",
    conda:
        CONDA_ENV
    params:
        index_dir=input_dir("classes"),
    shell:
        "python -m imageclf submission --predictions {input.predictions} "
        "--index-dir {params.index_dir} --out-csv {output.csv} --out-zip {output.zip} > {log} 2>&1"
