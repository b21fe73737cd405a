# Data you can trust (docs/near_duplicates.md): perceptual fingerprints of every image, the
# identical and near-duplicate pairs across splits (leaks.csv), and the label audit that ranks
# every labelled image by how likely its label is wrong. Their helpers: trust.smk.


rule fingerprints:
    """Perceptual fingerprints of one side's images (labelled: train/ and val/; test/), each
    content decoded once: the record in .snakemake/imageclf/ keeps them by SHA-256."""
    input:
        lambda wildcards: [INDEX_FILES[split] for split in DATA_GROUPS[wildcards.side]],
    output:
        paths.FINGERPRINTS,
    log:
        "logs/fingerprints/{side}.log",
    benchmark:
        "logs/benchmarks/fingerprints/{side}.tsv"
    wildcard_constraints:
        side="labelled|test",
    priority: 50  # before training, so that an on_leak error comes early
    conda:
        CONDA_ENV
    threads: stage_resources("index")["threads"]
    resources:
        mem_mb=stage_resources("index")["mem_mb"],
        runtime=stage_resources("index")["runtime"],
    params:
        **version_params("fingerprints"),
    shell:
        "imageclf fingerprints --index {input:q} --out {output:q} "
        f"--record .snakemake/imageclf/{FINGERPRINT_RECORD} "
        "--threads {threads} --log-file {log:q}"


rule leaks:
    """Identical and near-duplicate images across splits (leaks.csv): the list, which
    check_leaks holds against data.on_leak."""
    input:
        train=INDEX_FILES["train"],
        val=INDEX_FILES["val"],
        test=INDEX_FILES["test"],
        fingerprints=list(FINGERPRINTS.values()) if NEAR["distance"] is not None else [],
    output:
        in_report(
            INDEX_FILES["leaks"],
            "leaks",
            "data",
            labels={"table": "cross-split duplicates"},
        ),
    log:
        "logs/leaks.log",
    benchmark:
        "logs/benchmarks/leaks.tsv"
    priority: 50
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=stage_resources("index")["mem_mb"],
        runtime=stage_resources("index")["runtime"],
    params:
        **version_params("leaks"),
        distance=near_distance_flag(),
    shell:
        "imageclf leaks --train-index {input.train:q} --val-index {input.val:q} "
        "--test-index {input.test:q} --fingerprints {input.fingerprints:q} "
        "--near-distance {params.distance} --out {output:q} --log-file {log:q}"


rule check_leaks:
    """leaks.csv's pairs under data.on_leak (identical) and data.near_duplicates.on_leak (near):
    a pair under 'error' stops here the submission and the ablation table, which wait for this
    check. A failed check removes its marker alone: leaks.csv stays to be read. The policies are
    params, so changing one checks again (this job alone: the submission and the table take the
    marker as ancient, and nothing else reads it). Every later run is stopped before any job
    (trust.smk: leaks_pass_their_policy)."""
    input:
        INDEX_FILES["leaks"],
    output:
        paths.LEAK_CHECK,
    log:
        "logs/check_leaks.log",
    priority: 50
    localrule: True
    conda:
        CONDA_ENV
    params:
        **version_params("check_leaks"),
        on_leak=CFG["data"]["on_leak"],
        near_on_leak=NEAR["on_leak"] or "none",
        distance=near_distance_flag(),
    shell:
        "imageclf check_leaks --leaks {input:q} --on-leak {params.on_leak} "
        "--near-on-leak {params.near_on_leak} --near-distance {params.distance} "
        "--out {output:q} --log-file {log:q}"


rule audit:
    """Every labelled image ranked by how likely its label is wrong (confident learning on the
    audited run's held-out predictions), and a gallery of the most suspect."""
    input:
        predictions=[
            run_prediction(v, s, "val", CFG["predict"]["tta"])
            for v, s in audited_runs()
        ],
        selections=[
            path for v, s in audited_runs() for path in run_files(v, s, "selection")
        ],
        index=LABELLED_INDEX,
        classes=INDEX_FILES["classes"],
    output:
        issues=in_report(
            AUDIT["issues"],
            "label_issues",
            "data",
            labels={"table": "label audit"},
        ),
        gallery=in_report(
            AUDIT["gallery"],
            "audit_gallery",
            "data",
            labels={"figure": "likely mislabelled"},
        ),
    log:
        "logs/audit.log",
    benchmark:
        "logs/benchmarks/audit.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=stage_resources("report")["mem_mb"],
        runtime=stage_resources("report")["runtime"],
    params:
        **version_params("audit"),
        gallery=CFG["audit"]["gallery"],
    shell:
        "imageclf audit --predictions {input.predictions:q} --index {input.index:q} "
        "--classes {input.classes:q} --selections {input.selections:q} "
        "--out {output.issues:q} --gallery-out {output.gallery:q} "
        "--gallery {params.gallery} --log-file {log:q}"
