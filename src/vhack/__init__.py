"""vhack: gradient projection against reward hacking, as a Snakemake pipeline.

One module per concept: problems, prompts, sandbox, grader, models, adapters,
rollout, toy, teacher, pairs, basis, projection, grpo, metrics, runs,
aggregate, tables, report.
"""

__version__ = "0.1.0"
