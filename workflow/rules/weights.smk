rule weights:
    """Torchvision's weights file named by model.weights, from the torch hub cache or downloaded
    into it. A local rule: it runs on the submitting machine, so compute nodes never download.
    Scheduled first (priority), so an offline machine without the file stops before other work.
    """
    output:
        f"{WEIGHTS}/{{file}}",
    log:
        "logs/weights/{file}.log",
    wildcard_constraints:
        file=r"[^/]+\.pth?",
    priority: 100
    localrule: True
    conda:
        CONDA_ENV
    params:
        **version_params("weights"),
        url=weights_url,
    shell:
        "imageclf weights --url {params.url:q} --out {output:q} --log-file {log:q}"
