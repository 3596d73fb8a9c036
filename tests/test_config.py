"""Strict config: unknown keys fail naming the key, the file that set it and the closest allowed key."""

from pathlib import Path

import pytest
import yaml

from vhack.config import ConfigError, load_config, origin, schema_errors, typed_values

REPO = Path(__file__).resolve().parents[1]
DEFAULT = yaml.safe_load((REPO / "config/config.yaml").read_text())


def merged(*overlays: dict) -> tuple[dict, list]:
    """The default config with overlays merged deeply (as Snakemake does), and the sources list."""
    def merge(base, over):
        for k, v in over.items():
            base[k] = merge(dict(base.get(k, {})), v) if isinstance(v, dict) else v
        return base
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    sources = [("config/config.yaml", DEFAULT)]
    for i, overlay in enumerate(overlays):
        merge(config, overlay)
        sources.append((f"overlay{i}.yaml", overlay))
    return config, sources


def error(*overlays: dict) -> str:
    config, sources = merged(*overlays)
    with pytest.raises(ConfigError) as err:
        load_config(config, base_dir=REPO, sources=sources)
    return str(err.value)


def test_default_config_and_presets_pass_the_schema():
    config = load_config(merged()[0], base_dir=REPO)
    assert config["questions"]      # merged in from questions_file
    for preset in ("config/presets/fast.yaml", "config/presets/full.yaml", "benchmarks/multi_gpu/config.yaml"):
        overlay = yaml.safe_load((REPO / preset).read_text())
        assert schema_errors(merged(overlay)[0], []) == [], preset


def test_typo_under_train_names_key_file_and_suggestion():
    msg = error({"train": {"steps": 3}}, {"train": {"stepz": 5}})
    assert "train.stepz (in overlay1.yaml): unknown key; did you mean 'steps'?" in msg


def test_unknown_top_level_key_is_refused():
    assert "trian (in overlay0.yaml): unknown key; did you mean 'train'?" in error({"trian": {"steps": 5}})


def test_typos_in_arms_rows_and_nested_sections_are_caught():
    msg = error({"arms": {"vanilla": {"projektion": "none"}}, "grader": {"timeout": 2},
                 "rollout": {"backnd": "hf"}})
    assert "arms.vanilla.projektion (in overlay0.yaml): unknown key; did you mean 'projection'?" in msg
    assert "grader.timeout (in overlay0.yaml): unknown key; did you mean 'timeout_s'?" in msg
    assert "rollout.backnd (in overlay0.yaml): unknown key; did you mean 'backend'?" in msg
    rows = {"questions": {"q1": {"title": "t", "seeds": [1], "baseline": "a",
                                 "rows": [{"label": "a", "arm": "vanilla", "gatee": "no_gate"}]}}}
    assert "questions.q1.rows.0.gatee (in overlay0.yaml): unknown key; did you mean 'gate'?" in error(rows)


def test_a_question_file_typo_names_the_questions_file(tmp_path):
    questions = yaml.safe_load((REPO / "config/questions.yaml").read_text())
    questions["questions"]["q1"]["rows"][0]["mixx"] = 0.5
    (tmp_path / "q.yaml").write_text(yaml.safe_dump(questions))
    (tmp_path / "config").symlink_to(REPO / "config")
    config, sources = merged({"questions_file": "q.yaml"})
    with pytest.raises(ConfigError, match=r"questions.q1.rows.0.mixx \(in q.yaml\): unknown key; did you mean 'mix'"):
        load_config(config, base_dir=tmp_path, sources=sources)


def test_bad_values_and_references_name_their_file():
    msg = error({"train": {"gate": "one_sidd", "basis": "21pair"}})
    assert "train.gate = 'one_sidd' (in overlay0.yaml): did you mean 'one_sided'?" in msg
    msg = error({"train": {"basis": "21pair"}})
    assert "train.basis = '21pair' (in overlay0.yaml): unknown; did you mean '21pairs'?" in msg


def test_origin_is_the_last_source_that_sets_the_key():
    sources = [("a.yaml", {"train": {"steps": 1, "lr": 1}}), ("b.yaml", {"train": {"steps": 2}})]
    assert origin(["train", "steps"], sources) == "b.yaml"
    assert origin(["train", "lr"], sources) == "a.yaml"
    assert origin(["grader"], sources) == "the merged config"


def test_nested_command_line_values_become_yaml_types():
    # what Snakemake's --config 'train={steps: 5, mix: 0.25, tags: [a]}' leaves in the config
    assert typed_values({"train": {"steps": "5", "mix": "0.25", "tags": ["a"], "k_use": "null"}}) == {
        "train": {"steps": 5, "mix": 0.25, "tags": ["a"], "k_use": None}}


def test_renamed_values_say_what_to_write():
    msg = error({"train": {"advantage": "dr_grpo", "loss_agg": "dr_grpo"}})
    assert "train.advantage = 'dr_grpo' (in overlay0.yaml): renamed; write 'centered'" in msg
    assert "train.loss_agg = 'dr_grpo' (in overlay0.yaml): renamed; write 'fixed_denominator'" in msg
