# vhack: gradient projection against reward hacking.
# Default target: the report over the questions in `report_questions` (toy config: CPU, minutes);
# `snakemake all_questions` builds every declared question's table.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/problems.smk"
include: "rules/models.smk"
include: "rules/teacher.smk"
include: "rules/basis.smk"
include: "rules/train.smk"
include: "rules/aggregate.smk"
include: "rules/report.smk"


# Light jobs run on the submit host, not as cluster jobs (profiles/slurm, docs/slurm.md); downloads too
# (compute nodes often have no network).
localrules:
    build_problems,
    fetch_weights,
    train_tokenizer,
    aggregate,
    question_table,
    report,
    export_mlflow,


rule all:
    input:
        "reports/results.md",
        ["results/mlflow/runs.json"] if TRACKING.get("mlflow", False) else [],


rule all_questions:
    input:
        expand("results/{question}_table.md", question=sorted(QUESTIONS)),
