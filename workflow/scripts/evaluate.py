from vhack.jobs import run_evaluation
from vhack.provenance import setup_logging
from vhack.resources import compute_slot
from vhack.specs import ComputeSpec

setup_logging(snakemake.log[0])
with compute_slot(snakemake.threads):
    run_evaluation(
        params=snakemake.params.run,
        inputs=dict(snakemake.input.items()),
        out_path=snakemake.output.evals,
        compute=ComputeSpec.from_config(snakemake.config),
        samples_path=snakemake.output.samples,
    )
