from pathlib import Path

from vhack.jobs import run_training
from vhack.provenance import setup_logging
from vhack.resources import compute_slot
from vhack.specs import ComputeSpec

setup_logging(snakemake.log[0])
with compute_slot(snakemake.threads):
    run_training(
        params=snakemake.params.run,
        inputs=dict(snakemake.input.items()),
        out_dir=str(Path(snakemake.output.metrics).parent),
        compute=ComputeSpec.from_config(snakemake.config),
        snakemake_job=f"rule {snakemake.rule}, output {list(snakemake.output)}",
        tracking=snakemake.config.get("tracking", {}),
        targets=[snakemake.output.metrics],
    )
