rule demo_data:
    output:
        train=directory(f"{DEMO_ROOT}/train"),
        val=directory(f"{DEMO_ROOT}/val"),
        test=directory(f"{DEMO_ROOT}/test"),
        labels=f"{DEMO_ROOT}/test_labels.csv",
    log:
        "logs/demo_data.log",
    conda:
        CONDA_ENV
    params:
        root=output_dir("labels"),
    shell:
        "python -m imageclf demo --out-dir {params.root} > {log} 2>&1"
