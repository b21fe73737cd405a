SUBMITTED = {
    "variant": CFG["submission"]["variant"],
    "seed": CFG["submission"]["seed"],
}


rule submission:
    """results/submission.csv and results/submission.zip (prediction.csv inside)."""
    input:
        predictions=PRED.format(**SUBMITTED) + "/test.csv",
        test=INDEX_FILES["test"],
        classes=INDEX_FILES["classes"],
    output:
        csv="results/submission.csv",
        zip="results/submission.zip",
    params:
        index_dir=INDEX,
    log:
        "logs/submission.log",
    conda:
        CONDA_ENV
    shell:
        "python {STAGE} submission --predictions {input.predictions} "
        "--index-dir {params.index_dir} --out-csv {output.csv} --out-zip {output.zip} > {log} 2>&1"
