from vhack.provenance import setup_logging
from vhack.resources import compute_slot
from vhack.teacher import build_teacher_cache

setup_logging(snakemake.log[0])
with compute_slot(snakemake.threads):
    build_teacher_cache(
        name=snakemake.wildcards.teacher,
        teacher=snakemake.params.teacher,
        model=snakemake.params.model,
        problems_path=snakemake.input.problems,
        out_path=snakemake.output.cache,
        loopholes=snakemake.params.loopholes,
        grader_cfg=snakemake.params.grader,
        rollout=snakemake.params.rollout,
    )
