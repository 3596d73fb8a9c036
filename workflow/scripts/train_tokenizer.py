from vhack.provenance import setup_logging
from vhack.specs import LoopholeSpec
from vhack.toy import build_tokenizer

setup_logging(snakemake.log[0])
loopholes = LoopholeSpec.from_config(snakemake.params.loopholes)
build_tokenizer(snakemake.input.problems, snakemake.output.tokenizer, vocab_size=snakemake.params.spec.get("vocab_size", 1024),
                modes=loopholes.modes, style=loopholes.prompt_style)
