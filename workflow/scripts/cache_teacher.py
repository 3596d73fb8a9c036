from vhack.provenance import setup_logging
from vhack.resources import compute_slot
from vhack.specs import ComputeSpec
from vhack.teacher import build_teacher_cache

setup_logging(snakemake.log[0])
with compute_slot(snakemake.threads):
    build_teacher_cache(
        name=snakemake.wildcards.teacher,
        params=snakemake.params.teacher,
        problems_path=snakemake.input.problems,
        out_path=snakemake.output.cache,
        compute=ComputeSpec.from_config(snakemake.config),
    )
