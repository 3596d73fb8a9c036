rule aggregate:
    input:
        **run_outputs(report_runs()),
    output:
        metrics="results/metrics.parquet",
        runs="results/runs.parquet",
        runs_table=report("results/runs_table.md", caption="../workflow/report/runs_table.rst", category="Runs"),
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
    log:
        "logs/tables/{question}.log",
    script:
        "../workflow/scripts/question_table.py"
