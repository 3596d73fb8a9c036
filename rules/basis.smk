rule extract_basis:
    input:
        pairs=lambda w: config["pair_sets"][config["bases"][w.basis]["pairs"]],
        model=lambda w: model_files(config["bases"][w.basis]["model"]),
    output:
        basis="results/bases/v_hack_{basis}.safetensors",
    params:
        basis=lambda w: specs.basis_params(config, w.basis),
    threads: THREADS
    resources:
        gpu=1,
    conda:
        "../workflow/envs/vhack.yaml"
    log:
        "logs/bases/{basis}.log",
    benchmark:
        "benchmarks/out/bases/{basis}.tsv"
    script:
        "../workflow/scripts/extract_basis.py"
