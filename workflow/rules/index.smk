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
        root=os.path.normpath(CFG["data"]["root"]),  # ./data and data are the same folder
        val_split=carved_val_flags(),
    shell:
        "imageclf index --root {params.root:q} --train-out {output.train:q} "
        "--val-out {output.val:q} --classes-out {output.classes:q} {params.val_split} "
        "--on-leak {resources.on_leak} --max-image-pixels {resources.max_pixels} "
        "--threads {threads} --log-file {log:q}"


rule index_test:
    """test/: what prediction reads, the per-class summary and every cross-split leak. A change
    to the test images reruns this and the test side after it, never training."""
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
        leaks=in_report(
            INDEX_FILES["leaks"],
            "leaks",
            "data",
            labels={"table": "cross-split duplicates"},
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
        root=os.path.normpath(CFG["data"]["root"]),
        test_labels=path_flag("test-labels", "test_labels"),
    shell:
        "imageclf index_test --root {params.root:q} --train-index {input.train:q} "
        "--val-index {input.val:q} --classes {input.classes:q} {params.test_labels} "
        "--test-out {output.test:q} --summary-out {output.summary:q} "
        "--leaks-out {output.leaks:q} --on-leak {resources.on_leak} "
        "--max-image-pixels {resources.max_pixels} --threads {threads} --log-file {log:q}"
