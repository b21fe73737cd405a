rule select:
    input:
        history=f"{RUN}/history.csv",
        best_acc=f"{RUN}/checkpoints/best_val_acc.pt",
        best_loss=f"{RUN}/checkpoints/best_val_loss.pt",
        val=index_file(lambda wildcards: "val"),
    output:
        model=f"{RUN}/model.pt",
        selection=f"{RUN}/selection.json",
    log:
        "logs/select/{variant}/seed{seed}{fold}.log",
    conda:
        CONDA_ENV
    params:
        metric=CFG["select"]["metric"],
    shell:
        "imageclf select --history {input.history:q} --best-val-acc {input.best_acc:q} "
        "--best-val-loss {input.best_loss:q} --metric {params.metric} --val-index {input.val:q} "
        "--model-out {output.model:q} --selection-out {output.selection:q} --log-file {log:q}"
