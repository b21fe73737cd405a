rule select:
    input:
        history=f"{RUN}/history.csv",
        checkpoint=f"{RUN}/checkpoints/best_{CFG['select']['metric']}.pt",
        val=index_file(lambda wildcards: "val"),
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
        metric=CFG["select"]["metric"],
    shell:
        "imageclf select --history {input.history:q} --checkpoint {input.checkpoint:q} "
        "--metric {params.metric} --val-index {input.val:q} "
        "--model-out {output.model:q} --selection-out {output.selection:q} --log-file {log:q}"
