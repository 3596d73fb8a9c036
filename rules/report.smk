rule report:
    input:
        metrics="results/metrics.parquet",
        runs="results/runs.parquet",
        tables=expand("results/{question}_table.md", question=sorted(QUESTIONS)),
        samples=run_samples(sorted(RUNS))["samples"],
    output:
        results=report("reports/results.md", caption="../workflow/report/results.rst", category="Report"),
        html=report("reports/results.html", caption="../workflow/report/results_html.rst", category="Report"),
        figures=report(
            expand("reports/figures/{question}_{kind}.png", question=sorted(QUESTIONS), kind=FIGURE_KINDS),
            caption="../workflow/report/figure.rst",
            category="Figures",
        ),
    conda:
        "../workflow/envs/vhack.yaml"
    log:
        "logs/report.log",
    script:
        "../workflow/scripts/report.py"
