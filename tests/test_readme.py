"""The README's toy section: settings it quotes match config/config.yaml, and it quotes no results (those rot;
the report that `make toy` writes carries them)."""

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def toy_section() -> str:
    text = (REPO / "README.md").read_text()
    return text.split("## The toy regime (default)", 1)[1].split("\n## ", 1)[0]


def bullet(title: str) -> str:
    match = re.search(rf"^\* \*\*{re.escape(title)}\*\*.*?(?=^\* |\Z)", toy_section(), re.M | re.S)
    assert match, f"README toy section has no bullet **{title}**"
    return " ".join(match.group(0).split())


def test_training_settings_quoted_match_the_config():
    train, lora = CONFIG["train"], CONFIG["adapters"]["lora"]
    m = re.search(r"LoRA \(r=(\d+)\) on all projections, (\d+) prompts × G=(\d+) per step, mix ([\d.]+), "
                  r"(\d+) steps, lr (\d[\d.]*(?:e-?\d+)?)", bullet("Training"))
    assert m, bullet("Training")
    assert [int(m[1]), int(m[2]), int(m[3]), float(m[4]), int(m[5]), float(m[6])] == [
        lora["rank"], train["prompts_per_step"], train["group_size"], train["mix"], train["steps"], train["lr"]]


def test_toy_model_settings_quoted_match_the_config():
    student, teacher = CONFIG["toy_models"]["toy_student"], CONFIG["toy_models"]["toy_teacher"]
    text = bullet("Tokenizer and models")
    m = re.search(r"The \*\*student\*\* trains on (\d+) of the 12 families for (\d+) steps \(([\d.]+)% hack", text)
    assert m, text
    assert [int(m[1]), int(m[2]), float(m[3]) / 100] == [len(student["families"]), student["steps"],
                                                          student["hack_fraction"]]
    m = re.search(r"Qwen3 \(hidden (\d+), (\d+) layers, head_dim (\d+)", text)
    assert m, text
    arch = student["arch"]
    assert [int(m[1]), int(m[2]), int(m[3])] == [arch["hidden_size"], arch["num_hidden_layers"], arch["head_dim"]]
    m = re.search(r"fine-tuned for (\d+) steps on (\d+)% hacks", text)
    assert m, text
    assert [int(m[1]), float(m[2]) / 100] == [teacher["steps"], teacher["hack_fraction"]]


def test_the_findings_bullet_quotes_no_numbers():
    findings = bullet("What the toy world shows")
    assert "reports/results.md" in findings
    assert not re.search(r"\d\.\d|\d+ ?%", findings), findings
