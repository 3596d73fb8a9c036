from pathlib import Path

from vhack.io import write_json
from vhack.provenance import setup_logging
from vhack.tracking import export_to_mlflow

log = setup_logging(snakemake.log[0])
ids = export_to_mlflow(sorted({str(Path(p).parent) for p in snakemake.input.run_json}), snakemake.output.store)
write_json(snakemake.output.runs, ids)
log.info("exported %d runs to the MLflow store %s", len(ids), snakemake.output.store)
