from vhack.jobs import run_basis_extraction
from vhack.provenance import setup_logging
from vhack.resources import compute_slot

setup_logging(snakemake.log[0])
with compute_slot(snakemake.threads):
    run_basis_extraction(
        name=snakemake.params.name,
        basis_params=snakemake.params.basis,
        model=snakemake.params.model,
        adapter=snakemake.params.adapter,
        pairs_path=snakemake.input.pairs,
        out_path=snakemake.output.basis,
        style=snakemake.params.loopholes.get("prompt_style", "full"),
        pair_set=snakemake.params.pair_set,
    )
