rule cache_teacher:
    input:
        problems=lambda w: problems_path(config["teachers"][w.teacher]["problem_set"]),
        model=lambda w: model_files(config["teachers"][w.teacher]["model"]),
    output:
        cache="data/teacher_cache/{teacher}.parquet",
    params:
        teacher=lambda w: config["teachers"][w.teacher],
        model=lambda w: model_spec(config["teachers"][w.teacher]["model"]),
        loopholes=config["loopholes"],
        grader=config["grader"],
        rollout=config["rollout"],
    threads: THREADS
    resources:
        gpu=1,
    log:
        "logs/teacher/{teacher}.log",
    benchmark:
        "benchmarks/out/teacher/{teacher}.tsv"
    script:
        "../workflow/scripts/cache_teacher.py"
