import json

from imageclf.core.tables import write_manifest


rule manifest:
    """The named paths that the ensemble, ablation and plots stages read (MANIFEST)."""
    output:
        MANIFEST_PATH,
    log:
        "logs/manifest.log",
    localrule: True
    params:
        # the content is a param: the file is rewritten exactly when a path or a row changes
        manifest=json.dumps(MANIFEST, sort_keys=True),
    run:
        wrote = write_manifest(output[0], MANIFEST)
        Path(log[0]).write_text(
            f"{output[0]}: {'written' if wrote else 'unchanged'}\n"
        )


rule ablation:
    """Per variant and ensemble: mean ± sd over seeds and a paired comparison with
    ablation.reference."""
    input:
        manifest=MANIFEST_PATH,
        runs=manifest_files("runs", "val", "test"),
        full_fits=FULL_FIT_PREDICTIONS,
        models=model_files(*MODEL_FILES),
        ensembles=manifest_files("ensembles", "val", "test"),
        classes=INDEX_FILES["classes"],
        leak_check=ancient(paths.LEAK_CHECK),  # as for the submission
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
        **version_params("ablation"),
        reference=CFG["ablation"]["reference"],
        samples=CFG["ablation"]["bootstrap_samples"],
        out_dir=lambda wildcards, output: os.path.dirname(output.table),
    shell:
        "imageclf ablation --manifest {input.manifest:q} --reference {params.reference} "
        "--bootstrap-samples {params.samples} --out-dir {params.out_dir:q} --log-file {log:q}"


rule plots:
    """Curves of every run, and the submitted model's confusion matrix and worst classes."""
    input:
        manifest=MANIFEST_PATH,
        histories=model_files("history"),
        val=SUBMITTED_PRED["val"],
        test=SUBMITTED_PRED["test"],
        index_val=LABELLED_INDEX,
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
        **version_params("plots"),
        out_dir=lambda wildcards, output: os.path.dirname(output.curves),
    shell:
        "imageclf plots --manifest {input.manifest:q} --out-dir {params.out_dir:q} "
        "--log-file {log:q}"


rule ablation_table:
    """Target: every variant trained and compared, with tables and plots."""
    input:
        rules.ablation.output,
        rules.plots.output,
    localrule: True
