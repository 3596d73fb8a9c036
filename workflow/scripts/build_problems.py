from vhack.problems import build_problem_set, write_problems
from vhack.provenance import setup_logging

log = setup_logging(snakemake.log[0])
problems = build_problem_set(snakemake.params.spec)
write_problems(snakemake.output.problems, problems)
log.info("%d problems -> %s", len(problems), snakemake.output.problems)
