from pathlib import Path

from vhack.aggregate import write_aggregate
from vhack.io import write_text
from vhack.provenance import setup_logging
from vhack.tables import runs_table

log = setup_logging(snakemake.log[0])
run_dirs = sorted({str(Path(p).parent) for p in snakemake.input.run_json})
_, runs = write_aggregate(run_dirs, snakemake.output.metrics, snakemake.output.runs)
write_text(snakemake.output.runs_table, runs_table(runs))
log.info("aggregated %d runs", len(runs))
