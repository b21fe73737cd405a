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
        root=lambda wildcards, output: os.path.dirname(output.labels),
    shell:
        "imageclf demo --out-dir {params.root:q} --log {log:q}"
