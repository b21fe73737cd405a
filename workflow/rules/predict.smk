rule predict:
    input:
        unpack(lambda wildcards: cache_inputs(wildcards, ["val", "test"])),
        config=f"{RUN}/config.json",
        model=f"{RUN}/model.pt",
        val=INDEX_FILES["val"],
        test=INDEX_FILES["test"],
        classes=INDEX_FILES["classes"],
        test_labels=test_labels_input,
    output:
        val=f"{PRED}/val.csv",
        test=f"{PRED}/test.csv",
    log:
        "logs/predict/{variant}/seed{seed}.log",
    benchmark:
        "benchmarks/predict/{variant}/seed{seed}.tsv"
    conda:
        CONDA_ENV
    threads: stage_resources("predict")["threads"]
    resources:
        mem_mb=stage_resources("predict")["mem_mb"],
        runtime=stage_resources("predict")["runtime"],
        gpu=stage_resources("predict").get("gpu", 0),
    params:
        index_dir=input_dir("classes"),
        batch_size=CFG["predict"]["batch_size"],
        caches=cache_flags(["val", "test"]),
        test_labels=test_labels_flag,
    shell:
        "python -m imageclf predict --run-config {input.config} --model {input.model} "
        "--index-dir {params.index_dir} --out-val {output.val} --out-test {output.test} "
        "{params.test_labels} --batch-size {params.batch_size} --threads {threads} "
        "{params.caches} > {log} 2>&1"
