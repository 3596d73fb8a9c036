rule cache_teacher:
    input:
        problems=lambda w: problems_path(config["teachers"][w.teacher]["problem_set"]),
        model=lambda w: model_files(config["teachers"][w.teacher]["model"]),
    output:
        cache="data/teacher_cache/{teacher}.parquet",
    params:
        teacher=lambda w: specs.teacher_params(config, w.teacher),
    threads: lambda w: config["teachers"][w.teacher].get("threads", THREADS)
    resources:
        gpu=1,
    conda:
        "../workflow/envs/vhack.yaml"
    log:
        "logs/teacher/{teacher}.log",
    benchmark:
        "benchmarks/out/teacher/{teacher}.tsv"
    script:
        "../workflow/scripts/cache_teacher.py"
