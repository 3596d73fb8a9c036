from vhack.provenance import setup_logging
from vhack.toy import build_tokenizer

setup_logging(snakemake.log[0])
build_tokenizer(
    snakemake.input.problems,
    snakemake.output.tokenizer,
    vocab_size=snakemake.params.spec.get("vocab_size", 1024),
    modes=snakemake.params.loopholes["modes"],
    style=snakemake.params.loopholes.get("prompt_style", "toy"),
)
