"""Configuration loading and validation.

Validation runs before any job: schema first (types, enums, ranges), then the
cross-references a schema cannot express (a run naming an unknown basis, a
missing data file). Every error names the key, the value and what is allowed.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import jsonschema
import yaml

from .hub import check_weights

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
LEETCODE_HELP = ("Put a JSONL/Parquet export of the rl-rewardhacking benchmark's LeetCode split there "
                 "(public data: the benchmark's GitHub repository and the newfacade/LeetCodeDataset "
                 "dataset on the Hugging Face hub), or remove the problem set from config.")


class ConfigError(ValueError):
    pass


Sources = Sequence[tuple[str, Mapping[str, Any]]]   # (file name or "--config", its mapping), in merge order

# Values renamed because one name meant two things; the error says what to write instead.
RENAMED_VALUES = {("advantage", "dr_grpo"): "centered", ("advantage", "grpo"): "standardized",
                  ("loss_agg", "dr_grpo"): "fixed_denominator"}


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "<root>"


def origin(path: Sequence, sources: Sources) -> str:
    """The last source (file or --config) that sets the key at `path`: the one whose value won."""
    for name, data in reversed(sources):
        node: Any = data
        for part in path:
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                node = node[part]
            else:
                break
        else:
            return name
    return "the merged config"


def did_you_mean(key: str, allowed: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(key), list(allowed), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def _describe(e: jsonschema.ValidationError, path: list, sources: Sources) -> list[str]:
    """One line per problem: the key, the file that set it, what is wrong and what is allowed."""
    if e.validator == "additionalProperties":
        allowed = sorted(e.schema.get("properties", {}))
        return [f"  {_key(path + [k])} (in {origin(path + [k], sources)}): unknown key; "
                f"{did_you_mean(k, allowed)}allowed: {allowed}"
                for k in e.instance if k not in allowed]
    where = f"  {_key(path)} = {e.instance!r} (in {origin(path, sources)})"
    if e.validator == "enum":
        renamed = RENAMED_VALUES.get((path[-1] if path else None, e.instance))
        if renamed:
            return [f"{where}: renamed; write {renamed!r} (allowed: {e.validator_value})"]
        return [f"{where}: {did_you_mean(e.instance, map(str, e.validator_value))}allowed: {e.validator_value}"]
    if e.validator in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        return [f"{where}: {e.message}; must satisfy {e.validator} {e.validator_value}"]
    return [f"{where}: {e.message}"]


def settings_blocks(config: Mapping[str, Any]) -> list[tuple[list, Mapping[str, Any]]]:
    """Every place that sets training settings besides `train`: arms, question `fixed`s and rows."""
    blocks = [(["arms", a], s) for a, s in config.get("arms", {}).items()]
    for q, spec in (config.get("questions") or {}).items():
        if isinstance(spec, Mapping):
            blocks.append((["questions", q, "fixed"], spec.get("fixed", {})))
            rows = spec.get("rows", [])
            blocks += [(["questions", q, "rows", i], r) for i, r in enumerate(rows if isinstance(rows, list) else [])]
    return blocks


def schema_errors(config: Mapping[str, Any], sources: Sources, schema_path: Path = SCHEMA_PATH) -> list[str]:
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    found = [(list(e.absolute_path), e) for e in validator.iter_errors(config)]
    # arms and question rows hold training settings: the same keys and types as `train`, none required
    settings = {**schema["properties"]["train"], "required": []}
    row_keys = {"label": {"type": "string"}, "arm": {"type": "string"}}
    for prefix, block in settings_blocks(config):
        block_schema = {**settings, "properties": {**settings["properties"], **row_keys}} if prefix[-2] == "rows" \
            else settings
        sub = jsonschema.Draft202012Validator({**block_schema, "definitions": schema["definitions"]})
        found += [(prefix + list(e.absolute_path), e) for e in sub.iter_errors(block)]
    found.sort(key=lambda pe: [str(p) for p in pe[0]])
    return [line for path, e in found for line in _describe(e, path, sources)]


def validate_schema(config: Mapping[str, Any], schema_path: Path = SCHEMA_PATH, sources: Sources = ()) -> None:
    lines = schema_errors(config, sources, schema_path)
    if lines:
        raise ConfigError(f"invalid config (checked against {Path(schema_path).name}):\n" + "\n".join(lines[:20]))


def _ref(errors: list, path: list, value: Any, table: Mapping, table_key: str, sources: Sources) -> None:
    if value is not None and value not in table:
        errors.append(f"  {_key(path)} = {value!r} (in {origin(path, sources)}): unknown; "
                      f"{did_you_mean(value, table)}declared under {table_key}: {sorted(table)}")


def check_references(config: Mapping[str, Any], base_dir: Path, sources: Sources = ()) -> None:
    errors: list[str] = []

    def ref(path, value, table_key):
        _ref(errors, path, value, config[table_key], table_key, sources)

    modes = set(config["loopholes"]["modes"]) | {"none"}
    for name, ps in config["problem_sets"].items():
        if ps["source"] == "leetcode":
            if "path" not in ps:
                errors.append(f"  problem_sets.{name}.path: required for source leetcode. {LEETCODE_HELP}")
            elif not (base_dir / ps["path"]).exists():
                errors.append(f"  problem_sets.{name}.path = {ps['path']!r} "
                              f"(in {origin(['problem_sets', name, 'path'], sources)}): file not found. {LEETCODE_HELP}")
    errors += check_weights(config, base_dir)
    for name, tm in config.get("toy_models", {}).items():
        ref(["toy_models", name, "problem_set"], tm["problem_set"], "problem_sets")
        ref(["toy_models", name, "init_from"], tm.get("init_from"), "toy_models")
    for name, t in config["teachers"].items():
        ref(["teachers", name, "model"], t["model"], "models")
        ref(["teachers", name, "problem_set"], t["problem_set"], "problem_sets")
        for m in t.get("modes", []):
            if m not in modes:
                errors.append(f"  teachers.{name}.modes: {m!r} is not in loopholes.modes {sorted(modes)}")
    for name, path in config["pair_sets"].items():
        if not (base_dir / path).exists():
            errors.append(f"  pair_sets.{name} = {path!r} (in {origin(['pair_sets', name], sources)}): file not found")
    for name, b in config["bases"].items():
        ref(["bases", name, "pairs"], b["pairs"], "pair_sets")
        ref(["bases", name, "model"], b["model"], "models")
        ref(["bases", name, "adapter"], b["adapter"], "adapters")
    for q in config.get("report_questions") or []:
        _ref(errors, ["report_questions"], q, config.get("questions", {}), "questions (questions_file)", sources)
    for path, s in [(["train"], config["train"])] + settings_blocks(config):
        if "arm" in s:
            ref(path + ["arm"], s["arm"], "arms")
        ref(path + ["student"], s.get("student"), "models")
        ref(path + ["adapter"], s.get("adapter"), "adapters")
        ref(path + ["problem_set"], s.get("problem_set"), "problem_sets")
        ref(path + ["teacher"], s.get("teacher"), "teachers")
        ref(path + ["basis"], s.get("basis"), "bases")
        for m in s.get("train_modes", []) or []:
            if m not in modes:
                errors.append(f"  {_key(path)}.train_modes: {m!r} is not in loopholes.modes {sorted(modes)}")
    if errors:
        raise ConfigError("invalid config:\n" + "\n".join(errors))


def typed_values(value: Any) -> Any:
    """YAML scalars for the strings Snakemake's --config parser leaves in nested values.

    `--config 'train={steps: 5}'` reaches the workflow as {"train": {"steps": "5"}} (YAML's base
    loader keeps every nested scalar a string); this gives {"train": {"steps": 5}}.
    """
    if isinstance(value, Mapping):
        return {k: typed_values(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [typed_values(v) for v in value]
    if isinstance(value, str):
        try:
            return yaml.safe_load(value) if value.strip() else value
        except yaml.YAMLError:
            return value
    return value


def load_config(config: Mapping[str, Any] | str | Path, base_dir: str | Path = ".",
                sources: Sources = ()) -> dict[str, Any]:
    """Return the validated config; `questions_file` (if any) is merged in under `questions`.

    `sources` are the mappings merged into `config`, in order (Snakemake: config/config.yaml, each
    --configfile, then --config); an error names the one that set the offending key.
    """
    base_dir = Path(base_dir)
    if not isinstance(config, Mapping):
        sources = [(str(config), yaml.safe_load(Path(config).read_text()))]
        config = sources[0][1]
    config = dict(config)
    sources = list(sources)
    qfile = config.get("questions_file")
    if qfile and "questions" not in config:
        qpath = base_dir / qfile
        if not qpath.exists():
            raise ConfigError(f"questions_file = {qfile!r} (in {origin(['questions_file'], sources)}): file not found")
        config["questions"] = (yaml.safe_load(qpath.read_text()) or {}).get("questions", {})
        sources.insert(0, (str(qfile), {"questions": config["questions"]}))
    validate_schema(config, sources=sources)
    check_references(config, base_dir, sources)
    return config
