from pathlib import Path

from vhack.provenance import setup_logging
from vhack.resources import compute_slot
from vhack.jobs import run_training

setup_logging(snakemake.log[0])
with compute_slot(snakemake.threads):
    run_training(
        params=snakemake.params.run,
        inputs=dict(snakemake.input.items()),
        out_dir=str(Path(snakemake.output.metrics).parent),
        compute=snakemake.config.get("compute", {}),
        snakemake_job=f"rule {snakemake.rule}, output {list(snakemake.output)}",
        tracking=snakemake.config.get("tracking", {}),
        targets=[snakemake.output.metrics],
    )
