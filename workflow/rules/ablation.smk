rule ablation:
    """Per variant: mean ± sd over seeds and a paired comparison with ablation.reference."""
    input:
        runs=run_paths(f"{RUN_DIR}/run.json"),
        selections=run_paths(f"{RUN_DIR}/selection.json"),
        val=run_paths(f"{PRED_DIR}/val.csv"),
        test=run_paths(f"{PRED_DIR}/test.csv"),
        ensemble_val=ensemble_paths("val"),
        ensemble_test=ensemble_paths("test"),
        classes=INDEX_FILES["classes"],
    output:
        table=in_report(
            "results/ablation/table.csv",
            "table",
            "ablation",
            labels={"table": "ablation"},
        ),
        markdown="results/ablation/table.md",
        runs=in_report(
            "results/ablation/runs.csv",
            "runs",
            "ablation",
            labels={"table": "every run"},
        ),
        reports=[
            in_report(
                f"results/ablation/classification_report_{variant}.csv",
                "class_report",
                "errors",
                labels={"table": f"classification report, {variant}"},
            )
            for variant in VARIANTS
        ],
    log:
        "logs/ablation.log",
    benchmark:
        "logs/benchmarks/ablation.tsv"
    conda:
        CONDA_ENV
    threads: stage_resources("report")["threads"]
    resources:
        mem_mb=stage_resources("report")["mem_mb"],
        runtime=stage_resources("report")["runtime"],
    params:
        runs=run_names(),
        reference=CFG["ablation"]["reference"],
        samples=CFG["ablation"]["bootstrap_samples"],
        out_dir=lambda wildcards, output: os.path.dirname(output.table),
        ensembles=ensemble_flags,
    shell:
        "imageclf ablation --runs {params.runs} --run-records {input.runs:q} "
        "--selections {input.selections:q} --val-predictions {input.val:q} "
        "--test-predictions {input.test:q} --reference {params.reference} "
        "--classes {input.classes:q} --bootstrap-samples {params.samples} "
        "{params.ensembles} --out-dir {params.out_dir:q} --log-file {log:q}"


rule plots:
    """Curves of every run, and the submitted model's confusion matrix and worst classes."""
    input:
        histories=run_paths(f"{RUN_DIR}/history.csv"),
        val=SUBMITTED_PRED["val"],
        test=SUBMITTED_PRED["test"],
        index_val=INDEX_FILES["val"],
        classes=INDEX_FILES["classes"],
    output:
        curves=in_report(
            "results/plots/curves.png", "curves", "training", labels={"plot": "curves"}
        ),
        confusion=in_report(
            "results/plots/confusion_matrix.png",
            "confusion",
            "errors",
            labels={"plot": "confusion matrix"},
        ),
        worst=in_report(
            "results/plots/worst_classes.png",
            "worst",
            "errors",
            labels={"plot": "ten worst classes"},
        ),
        worst_table="results/plots/worst_classes.csv",
        gallery=in_report(
            "results/plots/error_gallery.png",
            "gallery",
            "errors",
            labels={"plot": "error gallery"},
        ),
    log:
        "logs/plots.log",
    benchmark:
        "logs/benchmarks/plots.tsv"
    conda:
        CONDA_ENV
    threads: stage_resources("report")["threads"]
    resources:
        mem_mb=stage_resources("report")["mem_mb"],
        runtime=stage_resources("report")["runtime"],
    params:
        runs=run_names(),
        out_dir=lambda wildcards, output: os.path.dirname(output.curves),
    shell:
        "imageclf plots --runs {params.runs} --histories {input.histories:q} "
        "--val-predictions {input.val:q} --test-predictions {input.test:q} "
        "--val-index {input.index_val:q} --classes {input.classes:q} "
        "--out-dir {params.out_dir:q} --log-file {log:q}"


rule ablation_table:
    """Target: every variant trained and compared, with tables and plots."""
    input:
        rules.ablation.output,
        rules.plots.output,
    localrule: True
