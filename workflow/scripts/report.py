from pathlib import Path

import pandas as pd

from vhack.experiments import expand_questions
from vhack.provenance import setup_logging
from vhack.report import write_report

log = setup_logging(snakemake.log[0])
_, questions = expand_questions(snakemake.config)
files = write_report(pd.read_parquet(snakemake.input.runs), pd.read_parquet(snakemake.input.metrics),
                     [questions[q] for q in snakemake.params.questions], Path(snakemake.output.results).parent,
                     samples={Path(p).parent.name: p for p in snakemake.input.samples})
log.info("report: %d files", len(files))
