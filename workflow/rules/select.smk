rule select:
    input:
        history=f"{RUN}/history.csv",
        best_acc=f"{RUN}/checkpoints/best_val_acc.pt",
        best_loss=f"{RUN}/checkpoints/best_val_loss.pt",
    output:
        model=f"{RUN}/model.pt",
        selection=f"{RUN}/selection.json",
    log:
        "logs/select/{variant}/seed{seed}.log",
    conda:
        CONDA_ENV
    params:
        metric=CFG["select"]["metric"],
        checkpoint_dir=input_dir("best_acc"),
    shell:
        "python -m imageclf select --history {input.history} --checkpoint-dir {params.checkpoint_dir} "
        "--metric {params.metric} --model-out {output.model} "
        "--selection-out {output.selection} > {log} 2>&1"
