rule report:
    input:
        metrics="results/metrics.parquet",
        runs="results/runs.parquet",
        tables=expand("results/{question}_table.md", question=sorted(QUESTIONS)),
    output:
        results=report("reports/results.md", caption="../workflow/report/results.rst", category="Report"),
        figures=report(
            directory("reports/figures"),
            patterns=["{name}.png"],
            caption="../workflow/report/figure.rst",
            category="Figures",
        ),
    log:
        "logs/report.log",
    script:
        "../workflow/scripts/report.py"
