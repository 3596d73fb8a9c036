rule extract_basis:
    input:
        pairs=lambda w: config["pair_sets"][config["bases"][w.basis]["pairs"]],
        model=lambda w: model_files(config["bases"][w.basis]["model"]),
    output:
        basis="results/bases/v_hack_{basis}.safetensors",
    params:
        name=lambda w: w.basis,
        basis=lambda w: config["bases"][w.basis],
        pair_set=lambda w: config["bases"][w.basis]["pairs"],
        model=lambda w: model_spec(config["bases"][w.basis]["model"]),
        adapter=lambda w: config["adapters"][config["bases"][w.basis]["adapter"]],
        loopholes=config["loopholes"],
    threads: THREADS
    resources:
        gpu=1,
    log:
        "logs/bases/{basis}.log",
    benchmark:
        "benchmarks/out/bases/{basis}.tsv"
    script:
        "../workflow/scripts/extract_basis.py"
