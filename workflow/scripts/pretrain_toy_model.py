from pathlib import Path

from vhack.provenance import setup_logging
from vhack.resources import compute_slot
from vhack.specs import ComputeSpec
from vhack.toy import pretrain_toy_model

setup_logging(snakemake.log[0])
compute = ComputeSpec.from_config(snakemake.config)
with compute_slot(snakemake.threads):
    pretrain_toy_model(
        snakemake.params.spec,
        snakemake.params.loopholes,
        tokenizer_dir=str(Path(snakemake.input.tokenizer).parent),
        problems_path=snakemake.input.problems,
        out_dir=str(Path(snakemake.output.model).parent),
        init_dir=str(Path(snakemake.input.init).parent) if "init" in snakemake.input.keys() else None,
        grader_workers=compute.grader_workers,
        progress=compute.progress,
    )
