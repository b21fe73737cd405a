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
        **version_params("demo"),
        root=lambda wildcards, output: os.path.dirname(output.labels),
        size=CFG["demo"]["data"]["image_size"],
        val_per_class=CFG["demo"]["data"]["val_per_class"],
        test_fraction=CFG["demo"]["data"]["test_fraction"],
        seed=CFG["demo"]["data"]["seed"],
    shell:
        "imageclf demo --out-dir {params.root:q} --size {params.size} "
        "--val-per-class {params.val_per_class} --test-fraction {params.test_fraction} "
        "--seed {params.seed} --log-file {log:q}"
