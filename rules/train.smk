# One job per (run configuration, seed); run names come from rules/common.smk (RUNS).


rule train:
    input:
        unpack(train_inputs),
    output:
        metrics=run_output("results/runs/{run}/metrics.parquet"),
        run_json=run_output("results/runs/{run}/run.json"),
        adapter=run_output("results/runs/{run}/adapter.safetensors"),
        samples=run_output("results/runs/{run}/samples.parquet"),
        **tracking_outputs("results/runs/{run}"),
    params:
        run=train_params,
    threads: THREADS
    resources:
        gpu=1,
    conda:
        "../workflow/envs/vhack.yaml"
    log:
        "logs/runs/{run}/train.log",
    benchmark:
        "benchmarks/out/runs/{run}/train.tsv"
    script:
        "../workflow/scripts/train.py"


rule evaluate:
    input:
        unpack(eval_inputs),
    output:
        evals="results/runs/{run}/eval.parquet",
        samples="results/runs/{run}/eval_samples.parquet",
    params:
        run=eval_params,
    threads: THREADS
    resources:
        gpu=1,
    conda:
        "../workflow/envs/vhack.yaml"
    log:
        "logs/runs/{run}/evaluate.log",
    benchmark:
        "benchmarks/out/runs/{run}/evaluate.tsv"
    script:
        "../workflow/scripts/evaluate.py"
