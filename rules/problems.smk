rule build_problems:
    input:
        data=lambda w: [config["problem_sets"][w.problem_set]["path"]]
        if "path" in config["problem_sets"][w.problem_set]
        else [],
    output:
        problems="data/problems/{problem_set}.parquet",
    params:
        spec=lambda w: config["problem_sets"][w.problem_set],
    conda:
        "../workflow/envs/vhack.yaml"
    log:
        "logs/problems/{problem_set}.log",
    script:
        "../workflow/scripts/build_problems.py"
