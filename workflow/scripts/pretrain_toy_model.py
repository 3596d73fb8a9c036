from pathlib import Path

from vhack.grader import Grader
from vhack.provenance import setup_logging
from vhack.resources import compute_slot
from vhack.toy import ToyTrainConfig, build_toy_model_dir

setup_logging(snakemake.log[0])
spec = dict(snakemake.params.spec)
loopholes = snakemake.params.loopholes
cfg = ToyTrainConfig(
    hack_fraction=spec["hack_fraction"], steps=spec["steps"], lr=spec["lr"], batch_size=spec["batch_size"],
    warmup_steps=spec.get("warmup_steps", 0), seed=spec.get("seed", 0), modes=tuple(loopholes["modes"]),
    style=loopholes.get("prompt_style", "toy"), families=tuple(spec.get("families", ())),
)
with compute_slot(snakemake.threads), Grader(workers=snakemake.params.grader.get("workers")) as grader:
    build_toy_model_dir(
        tokenizer_dir=str(Path(snakemake.input.tokenizer).parent),
        problems_path=snakemake.input.problems,
        out_dir=str(Path(snakemake.output.model).parent),
        cfg=cfg,
        arch=spec.get("arch"),
        grader=grader,
        init_dir=str(Path(snakemake.input.init).parent) if "init" in snakemake.input.keys() else None,
    )
