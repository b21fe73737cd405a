rule run_config:
    """The complete configuration of one run (recipe + variant overlay + seed).

    Only this run's own settings are its params, so editing one variant re-runs that variant
    alone (Snakemake's params rerun trigger). A config.json that means the same is kept as it
    is (config.run_config_param): a key added at its neutral value reruns nothing."""
    output:
        in_report(
            f"{RUN}/config.json",
            "run_config",
            "configuration",
            labels={"variant": "{variant}", "seed": "{seed}", "fold": "{fold}"},
        ),
    log:
        "logs/run_config/{variant}/seed{seed}{fold}.log",
    wildcard_constraints:
        fold=TRAINED_FOLD,
    localrule: True
    params:
        run=lambda wildcards: run_config_param(
            run_config(CFG, wildcards.variant, int(wildcards.seed)),
            f"{RUN}/config.json".format(**wildcards),
        ),
    run:
        write_run_config(output[0], params.run)


rule cache:
    """Decode and resize one split once; see workflow/imageclf/data/cache.py."""
    input:
        index=f"{INDEX}{{fold}}/{{split}}.csv",
    output:
        pixels=f"{paths.CACHE}.npy",
        meta=f"{paths.CACHE}.csv",
    log:
        "logs/cache{fold}/{split}_{size}px_{mode}.log",
    benchmark:
        "logs/benchmarks/cache{fold}/{split}_{size}px_{mode}.tsv"
    wildcard_constraints:
        split="train|val|test",
        # a fold's own train and held-out images, or a full fit's, under cross-validation
        fold=paths.CACHE_FOLD,
        size=r"\d+",
        mode=r"exact|[ms][0-9.]+",
    conda:
        CONDA_ENV
    threads: stage_resources("index")["threads"]
    resources:
        mem_mb=stage_resources("index")["mem_mb"],
        runtime=stage_resources("index")["runtime"],
    params:
        **version_params("cache"),
    shell:
        "imageclf cache --index {input.index:q} --pixels-out {output.pixels:q} "
        "--meta-out {output.meta:q} --mode {wildcards.mode} --image-size {wildcards.size} "
        "--threads {threads} --log-file {log:q}"


# Training keeps the best checkpoint by each selectable metric (core/metrics.py); its outputs name the two that
# always were, and select.metric's.
rule train:
    input:
        unpack(lambda wildcards: cache_inputs(wildcards, ["train", "val"])),
        unpack(weights_input),
        unpack(exclude_input),  # trust.smk: data.exclude's list, for a run that has one
        config=f"{RUN}/config.json",
        train=index_file(lambda wildcards: "train"),
        val=index_file(lambda wildcards: "val"),
        classes=INDEX_FILES["classes"],
    output:
        **(
            {"best_selected": f"{RUN}/checkpoints/best_{CFG['select']['metric']}.pt"}
            if CFG["select"]["metric"] not in ("val_acc", "val_loss")
            else {}
        ),
        history=f"{RUN}/history.csv",
        run=f"{RUN}/run.json",
        best_acc=f"{RUN}/checkpoints/best_val_acc.pt",
        best_loss=f"{RUN}/checkpoints/best_val_loss.pt",
    log:
        "logs/train/{variant}/seed{seed}{fold}.log",
    benchmark:
        "logs/benchmarks/train/{variant}/seed{seed}{fold}.tsv"
    wildcard_constraints:
        fold=TRAINED_FOLD,
    conda:
        CONDA_ENV
    threads: stage_resources("train")["threads"]
    resources:
        mem_mb=stage_resources("train")["mem_mb"],
        runtime=stage_resources("train")["runtime"],
        gpu=gpu_resource("train"),
        gpu_share=gpu_share("train"),
        gpu_seats=gpu_seats("train"),
        # A resource, not a param: params are rerun triggers, and the worker count changes the
        # speed of a run, never its results (config.EXECUTION_ONLY).
        loader_workers=lambda wildcards: execution_settings(CFG, wildcards.variant)[
            "num_workers"
        ],
    params:
        launcher=train_launcher,
        train_cache=cache_flag("train-cache", "train"),
        val_cache=cache_flag("val-cache", "val"),
        val_index=path_flag("val-index", "val"),
        model_out=path_flag("model-out", "model"),
        out_dir=lambda wildcards, output: os.path.dirname(output.history),
        # Resume state: not an output, so Snakemake keeps it when a killed job re-runs.
        state_dir=lambda wildcards, output: os.path.join(
            os.path.dirname(output.history), "resume"
        ),
        # a log, not an output: `tensorboard --logdir logs/tensorboard` while runs train
        tensorboard=lambda wildcards: f"logs/tensorboard/{wildcards.variant}/seed{wildcards.seed}{wildcards.fold}",
        weights=path_flag("weights-file", "weights"),
    shell:
        # on a workstation: GPUs of its own (gpus.smk); elsewhere the command as it is
        "imageclf gpus {resources.gpu} --share {resources.gpu_share} -- "
        "{params.launcher} train --run-config {input.config:q} --train-index {input.train:q} "
        "{params.val_index} --classes {input.classes:q} --out-dir {params.out_dir:q} "
        "{params.model_out} --state-dir {params.state_dir:q} --threads {threads} "
        "--num-workers {resources.loader_workers} {params.train_cache} {params.val_cache} "
        "--tensorboard-dir {params.tensorboard:q} {params.weights} --log-file {log:q}"
