rule select:
    input:
        history=f"{RUN}/history.csv",
        checkpoint=f"{RUN}/checkpoints/best_{CFG['select']['metric']}.pt",
    output:
        model=f"{RUN}/model.pt",
        selection=f"{RUN}/selection.json",
    log:
        "logs/select/{variant}/seed{seed}.log",
    conda:
        CONDA_ENV
    params:
        metric=CFG["select"]["metric"],
        tta=" ".join(CFG["predict"]["tta"]),
    shell:
        "imageclf select --history {input.history:q} --checkpoint {input.checkpoint:q} "
        "--metric {params.metric} --tta {params.tta} "
        "--model-out {output.model:q} --selection-out {output.selection:q} --log-file {log:q}"
