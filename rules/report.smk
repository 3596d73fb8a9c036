rule report:
    input:
        metrics="results/metrics.parquet",
        runs="results/runs.parquet",
        tables=expand("results/{question}_table.md", question=REPORT_QUESTIONS),
        samples=run_samples(report_runs())["samples"],
    output:
        results=report("reports/results.md", caption="../workflow/report/results.rst", category="Report"),
        html=report("reports/results.html", caption="../workflow/report/results_html.rst", category="Report"),
        figures=report(
            expand("reports/figures/{question}_{kind}.png", question=REPORT_QUESTIONS, kind=FIGURE_KINDS),
            caption="../workflow/report/figure.rst",
            category="Figures",
        ),
    conda:
        "../workflow/envs/vhack.yaml"
    params:
        questions=REPORT_QUESTIONS,
    log:
        "logs/report.log",
    script:
        "../workflow/scripts/report.py"
