# The toy regime builds its own tokenizer and tiny Qwen3 models; real models come from presets
# (local directories, or hub ids fetched once by fetch_weights: vhack.hub).


rule train_tokenizer:
    input:
        problems=problems_path(config.get("toy_tokenizer", {}).get("problem_set", "toy")),
    output:
        tokenizer="results/models/toy_tokenizer/tokenizer.json",
    params:
        spec=config.get("toy_tokenizer", {}),
        loopholes=specs.prompt_params(config),
    conda:
        "../workflow/envs/vhack.yaml"
    log:
        "logs/models/toy_tokenizer.log",
    script:
        "../workflow/scripts/train_tokenizer.py"


rule pretrain_toy_model:
    input:
        unpack(toy_model_inputs),
    output:
        model="results/models/{toy_model}/model.safetensors",
        rates="results/models/{toy_model}/rates.json",
    params:
        spec=lambda w: TOY_MODELS[w.toy_model],
        loopholes=specs.prompt_params(config),
    threads: lambda w: TOY_MODELS[w.toy_model].get("threads", THREADS)
    resources:
        gpu=1,
    conda:
        "../workflow/envs/vhack.yaml"
    log:
        "logs/models/{toy_model}.log",
    benchmark:
        "benchmarks/out/models/{toy_model}.tsv"
    script:
        "../workflow/scripts/pretrain_toy_model.py"


rule fetch_weights:
    output:
        manifest=fetched_manifest("{hub_model}"),
    params:
        model=lambda w: config["models"][w.hub_model],
        cache_dir=lambda w, output: os.path.dirname(os.path.dirname(output.manifest)),   # {cache_dir}/fetched/
        offline=HUB["offline"],
    conda:
        "../workflow/envs/vhack.yaml"
    log:
        "logs/hub/{hub_model}.log",
    script:
        "../workflow/scripts/fetch_weights.py"
