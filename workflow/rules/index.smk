# A user's data set is checked before its index is touched. Snakemake deletes the outputs of a
# job before it runs and after it fails, so a data problem found by the index job itself would
# delete the finished index. check_data and check_test_data run the index's own checks
# (`imageclf index --check-out`) and write a marker named by what they checked (common.smk:
# checked_key), which the index rules take as an input (common.smk: data_stamp). A failed check
# deletes only its own marker, and the index job never starts; when the data come back to what
# they were, their marker is still there and nothing is planned.


rule check_data:
    """train/ and val/ pass every check of the index (docs/design.md: A failing stage keeps
    what it had)."""
    output:
        f"{INDEX}/checked/labelled-{{key}}.json",
    log:
        "logs/check_data/labelled-{key}.log",
    wildcard_constraints:
        key="[0-9a-f]{16}",
    conda:
        CONDA_ENV
    threads: stage_resources("index")["threads"]
    resources:
        mem_mb=stage_resources("index")["mem_mb"],
        runtime=stage_resources("index")["runtime"],
        on_leak=CFG["data"]["on_leak"],  # checks, not rerun triggers (see rule index)
        on_small=CFG["data"]["on_small_image"],
        max_pixels=CFG["data"]["max_image_pixels"],
    params:
        **version_params("index"),
        root=os.path.normpath(CFG["data"]["root"]),
        val_split=carved_val_flags(),
    shell:
        "imageclf index --root {params.root:q} --check-out {output:q} {params.val_split} "
        "--on-leak {resources.on_leak} --on-small-image {resources.on_small} "
        "--max-image-pixels {resources.max_pixels} --threads {threads} --log-file {log:q}"


rule check_test_data:
    """test/ (and the test labels) pass every check of index_test."""
    input:
        train=INDEX_FILES["train"],
        val=INDEX_FILES["val"],
        classes=INDEX_FILES["classes"],
        test_labels=test_labels_input,
    output:
        f"{INDEX}/checked/test-{{key}}.json",
    log:
        "logs/check_data/test-{key}.log",
    wildcard_constraints:
        key="[0-9a-f]{16}",
    conda:
        CONDA_ENV
    threads: stage_resources("index")["threads"]
    resources:
        mem_mb=stage_resources("index")["mem_mb"],
        runtime=stage_resources("index")["runtime"],
        on_leak=CFG["data"]["on_leak"],
        on_small=CFG["data"]["on_small_image"],
        max_pixels=CFG["data"]["max_image_pixels"],
    params:
        **version_params("index_test"),
        root=os.path.normpath(CFG["data"]["root"]),
        test_labels=path_flag("test-labels", "test_labels"),
    shell:
        "imageclf index_test --root {params.root:q} --train-index {input.train:q} "
        "--val-index {input.val:q} --classes {input.classes:q} {params.test_labels} "
        "--check-out {output:q} --on-leak {resources.on_leak} "
        "--on-small-image {resources.on_small} --max-image-pixels {resources.max_pixels} "
        "--threads {threads} --log-file {log:q}"


rule index:
    """train/ and val/: what training reads. Reruns only when their files change."""
    input:
        data=data_stamp("labelled"),
    output:
        train=INDEX_FILES["train"],
        val=INDEX_FILES["val"],
        classes=INDEX_FILES["classes"],
    log:
        "logs/index.log",
    benchmark:
        "logs/benchmarks/index.tsv"
    conda:
        CONDA_ENV
    threads: stage_resources("index")["threads"]
    resources:
        mem_mb=stage_resources("index")["mem_mb"],
        runtime=stage_resources("index")["runtime"],
        # Resources, not params: params are rerun triggers, and these only decide whether the
        # index fails, never what it writes; rewriting train.csv would retrain every run.
        on_leak=CFG["data"]["on_leak"],
        max_pixels=CFG["data"]["max_image_pixels"],
    params:
        **version_params("index"),
        root=os.path.normpath(CFG["data"]["root"]),  # ./data and data are the same folder
        val_split=carved_val_flags(),
    shell:
        "imageclf index --root {params.root:q} --train-out {output.train:q} "
        "--val-out {output.val:q} --classes-out {output.classes:q} {params.val_split} "
        "--on-leak {resources.on_leak} --max-image-pixels {resources.max_pixels} "
        "--threads {threads} --log-file {log:q}"


rule index_test:
    """test/: what prediction reads and the per-class summary (identical images across splits
    stop it under data.on_leak: error; rule leaks lists them). A change to the test images
    reruns this and the test side after it, never training."""
    input:
        data=data_stamp("test"),
        train=INDEX_FILES["train"],
        val=INDEX_FILES["val"],
        classes=INDEX_FILES["classes"],
        test_labels=test_labels_input,
    output:
        test=INDEX_FILES["test"],
        summary=in_report(
            INDEX_FILES["summary"],
            "summary",
            "data",
            labels={"table": "images per class"},
        ),
    log:
        "logs/index_test.log",
    benchmark:
        "logs/benchmarks/index_test.tsv"
    conda:
        CONDA_ENV
    threads: stage_resources("index")["threads"]
    resources:
        mem_mb=stage_resources("index")["mem_mb"],
        runtime=stage_resources("index")["runtime"],
        on_leak=CFG["data"]["on_leak"],  # checks, not rerun triggers (see rule index)
        max_pixels=CFG["data"]["max_image_pixels"],
    params:
        **version_params("index_test"),
        root=os.path.normpath(CFG["data"]["root"]),
        test_labels=path_flag("test-labels", "test_labels"),
    shell:
        "imageclf index_test --root {params.root:q} --train-index {input.train:q} "
        "--val-index {input.val:q} --classes {input.classes:q} {params.test_labels} "
        "--test-out {output.test:q} --summary-out {output.summary:q} "
        "--on-leak {resources.on_leak} "
        "--max-image-pixels {resources.max_pixels} --threads {threads} --log-file {log:q}"
