from vhack.hub import fetch_model
from vhack.provenance import setup_logging

setup_logging(snakemake.log[0])
fetch_model(
    model=snakemake.params.model,
    cache_dir=snakemake.params.cache_dir,
    offline=snakemake.params.offline,
    out_path=snakemake.output.manifest,
)
