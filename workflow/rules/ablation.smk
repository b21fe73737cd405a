rule ablation:
    """Per variant: mean ± sd over seeds and a paired comparison with ablation.reference."""
    input:
        runs=run_paths(f"{RUN}/run.json"),
        selections=run_paths(f"{RUN}/selection.json"),
        val=run_paths(f"{PRED}/val.csv"),
        test=run_paths(f"{PRED}/test.csv"),
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
        "benchmarks/ablation.tsv"
    conda:
        CONDA_ENV
    threads: stage_resources("report")["threads"]
    resources:
        mem_mb=stage_resources("report")["mem_mb"],
        runtime=stage_resources("report")["runtime"],
    params:
        variants=" ".join(VARIANTS),
        seeds=" ".join(str(s) for s in SEEDS),
        reference=CFG["ablation"]["reference"],
        samples=CFG["ablation"].get("bootstrap_samples", 10000),
    shell:
        "python -m imageclf ablation --results-dir results --variants {params.variants} "
        "--seeds {params.seeds} --reference {params.reference} --classes {input.classes} "
        "--bootstrap-samples {params.samples} --out-dir results/ablation > {log} 2>&1"


rule plots:
    """Curves of every run, and the submitted model's confusion matrix and worst classes."""
    input:
        histories=run_paths(f"{RUN}/history.csv"),
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
        "benchmarks/plots.tsv"
    conda:
        CONDA_ENV
    threads: stage_resources("report")["threads"]
    resources:
        mem_mb=stage_resources("report")["mem_mb"],
        runtime=stage_resources("report")["runtime"],
    params:
        histories=lambda wildcards, input: " ".join(
            f"{variant}:{seed}:{path}"
            for (variant, seed), path in zip(
                [(v, s) for v in VARIANTS for s in SEEDS], input.histories
            )
        ),
        predictions_dir=input_dir("test"),
        index_dir=input_dir("classes"),
    shell:
        "python -m imageclf plots --histories {params.histories} "
        "--predictions-dir {params.predictions_dir} --index-dir {params.index_dir} "
        "--out-dir results/plots > {log} 2>&1"


rule ablation_table:
    """Target: every variant trained and compared, with tables and plots."""
    input:
        rules.ablation.output,
        rules.plots.output,
    localrule: True
