rule predict:
    """One split of one run: val for the ablation, test for the submission. A change to the
    test images reruns the test predictions only."""
    input:
        unpack(lambda wildcards: cache_inputs(wildcards, [wildcards.split])),
        config=f"{RUN}/config.json",
        model=f"{RUN}/model.pt",
        index=index_file(lambda wildcards: wildcards.split),
        classes=INDEX_FILES["classes"],
        test_labels=lambda wildcards: (
            test_labels_input() if wildcards.split == "test" else []
        ),
    output:
        f"{PRED}/{{split}}.csv",
    log:
        "logs/predict/{variant}/seed{seed}{fold}_{split}.log",
    benchmark:
        "logs/benchmarks/predict/{variant}/seed{seed}{fold}_{split}.tsv"
    conda:
        CONDA_ENV
    threads: stage_resources("predict")["threads"]
    resources:
        mem_mb=stage_resources("predict")["mem_mb"],
        runtime=stage_resources("predict")["runtime"],
        gpu=gpu_resource("predict"),
        gpu_share=gpu_share("predict"),
        gpu_seats=gpu_seats("predict"),
        # a resource, not a param: the worker count changes the speed, never the predictions
        loader_workers=CFG["predict"]["num_workers"],
    params:
        **version_params("predict"),
        batch_size=CFG["predict"]["batch_size"],
        cache=cache_flag("cache", lambda wildcards: wildcards.split),
        test_labels=path_flag("test-labels", "test_labels"),
        tta=" ".join(CFG["predict"]["tta"]),
    shell:
        # on a workstation: a GPU of its own (gpus.smk); elsewhere the command as it is
        "imageclf gpus {resources.gpu} --share {resources.gpu_share} -- "
        "imageclf predict --run-config {input.config:q} --model {input.model:q} "
        "--index {input.index:q} --classes {input.classes:q} --out {output:q} "
        "{params.test_labels} --batch-size {params.batch_size} --threads {threads} "
        "--num-workers {resources.loader_workers} "
        "{params.cache} --tta {params.tta} --log-file {log:q}"


use rule predict as predict_views with:
    output:
        f"{PRED}/tta-{{views}}/{{split}}.csv",
    log:
        "logs/predict/{variant}/seed{seed}{fold}_{split}_tta-{views}.log",
    benchmark:
        "logs/benchmarks/predict/{variant}/seed{seed}{fold}_{split}_tta-{views}.tsv"
    wildcard_constraints:
        views=r"none|[a-z]+(\+[a-z]+)*",
    params:
        **version_params("predict"),
        batch_size=CFG["predict"]["batch_size"],
        cache=cache_flag("cache", lambda wildcards: wildcards.split),
        test_labels=path_flag("test-labels", "test_labels"),
        # the views of an ensemble whose `tta` differs from predict.tta
        tta=lambda wildcards: (
            "" if wildcards.views == "none" else wildcards.views.replace("+", " ")
        ),


rule ensemble:
    """The mean class probabilities of an ensemble's member runs (config `ensembles`)."""
    input:
        manifest=MANIFEST_PATH,
        members=ensemble_members,
        classes=INDEX_FILES["classes"],
    output:
        ENSEMBLE_PRED,
    log:
        "logs/ensemble/{name}_{split}.log",
    wildcard_constraints:
        name="[A-Za-z0-9_.-]+",
    conda:
        CONDA_ENV
    params:
        **version_params("ensemble"),
    shell:
        "imageclf ensemble --manifest {input.manifest:q} --name {wildcards.name} "
        "--split {wildcards.split} --out {output:q} --log-file {log:q}"
