rule aggregate:
    input:
        **run_outputs(report_runs()),
    output:
        metrics="results/metrics.parquet",
        runs="results/runs.parquet",
        runs_table=report("results/runs_table.md", caption="../workflow/report/runs_table.rst", category="Runs"),
    conda:
        "../workflow/envs/vhack.yaml"
    log:
        "logs/aggregate.log",
    script:
        "../workflow/scripts/aggregate.py"


rule question_table:
    input:
        unpack(lambda w: run_outputs(question_runs(w.question))),
    output:
        table=report("results/{question}_table.md", caption="../workflow/report/question_table.rst", category="Tables"),
    params:
        question=lambda w: w.question,
    conda:
        "../workflow/envs/vhack.yaml"
    log:
        "logs/tables/{question}.log",
    script:
        "../workflow/scripts/question_table.py"


# Every finished run into a local MLflow file store (needs the `trackers` extra; on in rule all when
# tracking.mlflow is true): mlflow ui --backend-store-uri results/mlflow/store
rule export_mlflow:
    input:
        **run_outputs(sorted(RUNS)),
        **run_samples(sorted(RUNS)),
    output:
        store=directory("results/mlflow/store"),
        runs="results/mlflow/runs.json",
    conda:
        "../workflow/envs/trackers.yaml"
    log:
        "logs/export_mlflow.log",
    script:
        "../workflow/scripts/export_mlflow.py"
