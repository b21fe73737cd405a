rule select:
    input:
        history=f"{RUN}/history.csv",
        checkpoint=f"{RUN}/checkpoints/best_{CFG['select']['metric']}.pt",
        val=index_file(lambda wildcards: "val"),
        # A changed configuration reruns select, and so train, even when an interrupted train
        # left no outputs: Snakemake does not rerun a job for a missing intermediate input.
        config=f"{RUN}/config.json",
    output:
        model=f"{RUN}/model.pt",
        selection=f"{RUN}/selection.json",
    log:
        "logs/select/{variant}/seed{seed}{fold}.log",
    wildcard_constraints:
        fold=TRAINED_FOLD,
    conda:
        CONDA_ENV
    params:
        **version_params("select"),
        metric=CFG["select"]["metric"],
    shell:
        "imageclf select --history {input.history:q} --checkpoint {input.checkpoint:q} "
        "--metric {params.metric} --val-index {input.val:q} --run-config {input.config:q} "
        "--model-out {output.model:q} --selection-out {output.selection:q} --log-file {log:q}"
