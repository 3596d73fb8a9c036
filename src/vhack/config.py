"""Configuration loading and validation.

Validation runs before any job: schema first (types, enums, ranges), then the
cross-references a schema cannot express (a run naming an unknown basis, a
missing data file). Every error names the key, the value and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
LEETCODE_HELP = ("Put a JSONL/Parquet export of the rl-rewardhacking benchmark's LeetCode split there "
                 "(public data: the benchmark's GitHub repository and the newfacade/LeetCodeDataset "
                 "dataset on the Hugging Face hub), or remove the problem set from config.")


class ConfigError(ValueError):
    pass


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "<root>"


def validate_schema(config: Mapping[str, Any], schema_path: Path = SCHEMA_PATH) -> None:
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if not errors:
        return
    lines = []
    for e in errors[:10]:
        allowed = ""
        if e.validator == "enum":
            allowed = f"; allowed: {e.validator_value}"
        elif e.validator in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
            allowed = f"; must satisfy {e.validator} {e.validator_value}"
        elif e.validator == "additionalProperties":
            allowed = f"; allowed keys: {sorted(e.schema.get('properties', {}))}"
        lines.append(f"  {_key(e.absolute_path)} = {e.instance!r}: {e.message}{allowed}")
    raise ConfigError("invalid config (" + str(schema_path.name) + "):\n" + "\n".join(lines))


def _ref(errors: list, key: str, value: Any, table: Mapping, table_key: str) -> None:
    if value is not None and value not in table:
        errors.append(f"  {key} = {value!r}: unknown; declared under {table_key}: {sorted(table)}")


def check_references(config: Mapping[str, Any], base_dir: Path) -> None:
    errors: list[str] = []
    modes = set(config["loopholes"]["modes"]) | {"none"}
    for name, ps in config["problem_sets"].items():
        if ps["source"] == "leetcode":
            if "path" not in ps:
                errors.append(f"  problem_sets.{name}.path: required for source leetcode. {LEETCODE_HELP}")
            elif not (base_dir / ps["path"]).exists():
                errors.append(f"  problem_sets.{name}.path = {ps['path']!r}: file not found. {LEETCODE_HELP}")
    for name, tm in config.get("toy_models", {}).items():
        _ref(errors, f"toy_models.{name}.problem_set", tm["problem_set"], config["problem_sets"], "problem_sets")
        _ref(errors, f"toy_models.{name}.init_from", tm.get("init_from"), config["toy_models"], "toy_models")
    for name, t in config["teachers"].items():
        _ref(errors, f"teachers.{name}.model", t["model"], config["models"], "models")
        _ref(errors, f"teachers.{name}.problem_set", t["problem_set"], config["problem_sets"], "problem_sets")
        for m in t.get("modes", []):
            if m not in modes:
                errors.append(f"  teachers.{name}.modes: {m!r} is not in loopholes.modes {sorted(modes)}")
    for name, path in config["pair_sets"].items():
        if not (base_dir / path).exists():
            errors.append(f"  pair_sets.{name} = {path!r}: file not found")
    for name, b in config["bases"].items():
        _ref(errors, f"bases.{name}.pairs", b["pairs"], config["pair_sets"], "pair_sets")
        _ref(errors, f"bases.{name}.model", b["model"], config["models"], "models")
        _ref(errors, f"bases.{name}.adapter", b["adapter"], config["adapters"], "adapters")
    settings = [("train", config["train"])] + [(f"arms.{a}", s) for a, s in config["arms"].items()]
    for q, spec in config.get("questions", {}).items():
        settings += [(f"questions.{q}.fixed", spec.get("fixed", {}))]
        settings += [(f"questions.{q}.rows[{i}]", r) for i, r in enumerate(spec["rows"])]
        for i, r in enumerate(spec["rows"]):
            _ref(errors, f"questions.{q}.rows[{i}].arm", r["arm"], config["arms"], "arms")
    for q in config.get("report_questions") or []:
        _ref(errors, "report_questions", q, config.get("questions", {}), "questions (questions_file)")
    for where, s in settings:
        if where != "train":
            for k in s:
                if k not in config["train"] and k not in ("label", "arm"):
                    errors.append(f"  {where}.{k}: unknown training setting; allowed: {sorted(config['train'])}")
        _ref(errors, f"{where}.student", s.get("student"), config["models"], "models")
        _ref(errors, f"{where}.adapter", s.get("adapter"), config["adapters"], "adapters")
        _ref(errors, f"{where}.problem_set", s.get("problem_set"), config["problem_sets"], "problem_sets")
        _ref(errors, f"{where}.teacher", s.get("teacher"), config["teachers"], "teachers")
        _ref(errors, f"{where}.basis", s.get("basis"), config["bases"], "bases")
        for m in s.get("train_modes", []) or []:
            if m not in modes:
                errors.append(f"  {where}.train_modes: {m!r} is not in loopholes.modes {sorted(modes)}")
        for k in ("steps", "prompts_per_step", "group_size", "max_new_tokens"):
            if k in s and (not isinstance(s[k], int) or s[k] < 1):
                errors.append(f"  {where}.{k} = {s[k]!r}: must be a positive integer")
        if "mix" in s and not (isinstance(s["mix"], (int, float)) and 0 <= s["mix"] <= 1):
            errors.append(f"  {where}.mix = {s['mix']!r}: must be in [0, 1]")
    if errors:
        raise ConfigError("invalid config:\n" + "\n".join(errors))


def load_config(config: Mapping[str, Any] | str | Path, base_dir: str | Path = ".") -> dict[str, Any]:
    """Return the validated config; `questions_file` (if any) is merged in under `questions`."""
    base_dir = Path(base_dir)
    if not isinstance(config, Mapping):
        config = yaml.safe_load(Path(config).read_text())
    config = dict(config)
    qfile = config.get("questions_file")
    if qfile and "questions" not in config:
        qpath = base_dir / qfile
        if not qpath.exists():
            raise ConfigError(f"questions_file = {qfile!r}: file not found")
        config["questions"] = (yaml.safe_load(qpath.read_text()) or {}).get("questions", {})
    validate_schema(config)
    check_references(config, base_dir)
    return config
