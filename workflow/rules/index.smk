rule index:
    input:
        data=data_files,
        test_labels=test_labels_input,
    output:
        **{
            name: path
            for name, path in INDEX_FILES.items()
            if name not in ("summary", "leaks")
        },
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
        "logs/index.log",
    benchmark:
        "benchmarks/index.tsv"
    conda:
        CONDA_ENV
    threads: stage_resources("index")["threads"]
    resources:
        mem_mb=stage_resources("index")["mem_mb"],
        runtime=stage_resources("index")["runtime"],
    params:
        root=shlex.quote(CFG["data"]["root"]),
        test_labels=test_labels_flag,
        on_leak=CFG["data"]["on_leak"],
        out_dir=output_dir("classes"),
    shell:
        "python -m imageclf index --root {params.root} --out-dir {params.out_dir} "
        "{params.test_labels} --on-leak {params.on_leak} --threads {threads} > {log} 2>&1"
