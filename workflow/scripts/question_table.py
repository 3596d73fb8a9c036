from pathlib import Path

from vhack.aggregate import aggregate_runs
from vhack.experiments import expand_questions
from vhack.io import write_text
from vhack.provenance import setup_logging
from vhack.tables import question_table

setup_logging(snakemake.log[0])
_, questions = expand_questions(snakemake.config)
question = questions[snakemake.params.question]
_, runs = aggregate_runs(sorted({str(Path(p).parent) for p in snakemake.input.run_json}))
table = question_table(runs, question)
write_text(snakemake.output.table, f"# {question.id}: {question.title}\n\n{question.why}\n\n{table.markdown}\n")
