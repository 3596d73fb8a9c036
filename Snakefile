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


# Light jobs run on the submit host, not as cluster jobs (profiles/slurm, docs/slurm.md).
localrules:
    build_problems,
    train_tokenizer,
    aggregate,
    question_table,
    report,


rule all:
    input:
        "reports/results.md",


rule all_questions:
    input:
        expand("results/{question}_table.md", question=sorted(QUESTIONS)),
