from vhack.jobs import run_basis_extraction
from vhack.provenance import setup_logging
from vhack.resources import compute_slot

setup_logging(snakemake.log[0])
with compute_slot(snakemake.threads):
    run_basis_extraction(snakemake.params.basis, pairs_path=snakemake.input.pairs, out_path=snakemake.output.basis)
