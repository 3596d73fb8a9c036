"""Typed settings resolved once from config, and the rule params each job depends on.

Each part of a run (loopholes, grader, rollout, basis) is a frozen dataclass with its defaults and
`from_config` beside it. The `*_params` functions give each rule exactly what changes its output:
a training job's params hold what changes training, an evaluation's what changes evaluation, and
compute knobs (grader workers, micro-batch, threads, progress bars) are in none, so a change reruns
exactly what it affects.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Mapping

from .experiments import RunSpec
from .grpo import TrainConfig

if TYPE_CHECKING:
    from .adapters import AdapterConfig
    from .models import ModelSpec

EVAL_SETTINGS = ("test_samples", "max_new_tokens", "temperature")   # the run settings evaluation reads
COMPUTE_GRADER_KEYS = ("workers",)


def _known(cls, cfg: Mapping[str, Any], ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """cfg's keys as `cls` fields; a key the schema allows but `cls` lacks is an error, never dropped."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(cfg) - names - set(ignore))
    if unknown:
        raise ValueError(f"{cls.__name__} has no field for config key(s) {unknown}: add them to vhack.specs")
    return {k: v for k, v in cfg.items() if k in names and k not in ignore}


@dataclass(frozen=True)
class LoopholeSpec:
    """Config `loopholes`: the modes in play, how problems get theirs, how prompts disclose them."""

    modes: tuple[str, ...]
    assign_seed: int = 0
    prompt_style: str = "full"     # full (LLM prompts) | toy (terse, for the tiny model)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "LoopholeSpec":
        return cls(**{**_known(cls, cfg), "modes": tuple(cfg["modes"])})

    def assigned_modes(self, problems) -> dict[str, str]:
        from .prompts import assign_mode
        return {p.id: assign_mode(p.id, self.modes, self.assign_seed) for p in problems}


@dataclass(frozen=True)
class GraderSpec:
    """Config `grader`: sandbox limits and reward weights; `workers` is a compute knob."""

    timeout_s: float = 2.0
    cpu_s: float | None = None     # RLIMIT_CPU of the harness and the oracle; None: timeout_s
    memory_mb: int = 512
    format_bonus: float = 0.1
    pass_reward: float = 1.0
    workers: int | None = None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "GraderSpec":
        return cls(**_known(cls, cfg))

    def limits(self):
        """Sandbox limits for the flawed harness and the oracle alike (CPU in whole seconds, rounded up)."""
        import math
        from .sandbox import SandboxLimits
        cpu_s = self.timeout_s if self.cpu_s is None else self.cpu_s
        return SandboxLimits(timeout_s=float(self.timeout_s), cpu_s=math.ceil(cpu_s), memory_mb=int(self.memory_mb))

    def make(self, workers: int | None = None):
        from .grader import Grader, RewardConfig
        return Grader(workers=workers or self.workers, limits=self.limits(),
                      reward=RewardConfig(format_bonus=self.format_bonus, pass_reward=self.pass_reward))


@dataclass(frozen=True)
class RolloutSpec:
    """Config `rollout`: the sampling backend and its options (batch size, fast path, engine sizes)."""

    backend: str = "hf"
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "RolloutSpec":
        return cls(cfg.get("backend", "hf"), {k: v for k, v in cfg.items() if k != "backend"})


@dataclass(frozen=True)
class BasisSpec:
    """Config `bases.<name>`: the pair set, the model and adapter it lives in, and how it is extracted."""

    name: str
    pairs: str
    model: str
    adapter: str
    method: str = "svd"
    k: int = 5
    solve_orth_m: int = 0
    control: str = "none"
    divergence_tokens: int = 1              # method divergence: tokens scored per side from the divergence point
    modes: tuple[str, ...] | None = None    # a weak detector: only pairs of these modes
    seed: int = 0

    @classmethod
    def from_config(cls, name: str, cfg: Mapping[str, Any]) -> "BasisSpec":
        s = _known(cls, cfg, ignore=("name",))
        if s.get("modes") is not None:
            s["modes"] = tuple(s["modes"])
        return cls(name=name, **s)

    def extraction(self):
        from .basis import BasisConfig
        return BasisConfig(method=self.method, k=self.k, solve_orth_m=self.solve_orth_m, control=self.control,
                           divergence_tokens=self.divergence_tokens)

    def select_pairs(self, pairs) -> list:
        return [p for p in pairs if p.mode in self.modes] if self.modes else list(pairs)


@dataclass(frozen=True)
class TrainingRun:
    """One training run, resolved once from its rule params (`train_params`); run.json stores it."""

    name: str
    arm: str
    seed: int
    settings: TrainConfig
    student: ModelSpec
    adapter: AdapterConfig
    loopholes: LoopholeSpec
    grader: GraderSpec
    rollout: RolloutSpec
    basis: BasisSpec | None = None     # only for a run that re-extracts its basis (refresh_every > 0)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "TrainingRun":
        from .adapters import AdapterConfig
        from .models import ModelSpec
        basis = params.get("basis")
        return cls(name=params["run"], arm=params["arm"], seed=int(params["seed"]),
                   settings=TrainConfig.from_settings(params["settings"]),
                   student=ModelSpec.from_config(params["student"]),
                   adapter=AdapterConfig.from_config(params["adapter"]),
                   loopholes=LoopholeSpec.from_config(params["loopholes"]),
                   grader=GraderSpec.from_config(params["grader"]), rollout=RolloutSpec.from_config(params["rollout"]),
                   basis=BasisSpec.from_config(basis["name"], basis) if basis else None)

    @property
    def teacher(self) -> str | None:
        """The teacher whose cache the run draws from; None when G_t = 0."""
        return self.settings.teacher if self.settings.teacher_rows else None


def check_specs(config: Mapping[str, Any], runs: Mapping[str, RunSpec]) -> None:
    """Build every spec once at DAG time, so a key the schema allows but no spec reads fails before any job."""
    from .config import ConfigError
    try:
        LoopholeSpec.from_config(config["loopholes"])
        GraderSpec.from_config(config["grader"])
        ComputeSpec.from_config(config)
        for name, basis in config["bases"].items():
            BasisSpec.from_config(name, basis)
        for run in runs.values():
            TrainConfig.from_settings(run.settings)
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"config does not resolve to run specs: {err}") from err


# ---------------------------------------------------------------- what each rule depends on

def results_grader(config: Mapping[str, Any], reward: bool = True) -> dict[str, Any]:
    """The grader settings that change grades (and rewards, when the job uses them)."""
    spec = asdict(GraderSpec.from_config(config["grader"]))
    drop = COMPUTE_GRADER_KEYS + (() if reward else ("format_bonus", "pass_reward"))
    return {k: v for k, v in spec.items() if k not in drop}


def model_params(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A model's config entry for ModelSpec; a hub model also names the cache its job loads from."""
    from .hub import hub_settings, is_hub_id
    spec = {"name": name, **config["models"][name]}
    if not spec.get("toy") and any(is_hub_id(spec[k]) for k in ("path", "adapter") if spec.get(k)):
        spec["cache_dir"] = hub_settings(config)["cache_dir"]
    return spec


def uses_teacher(settings: Mapping[str, Any]) -> bool:
    """Whether a run draws cached teacher rows: the one place that decides it (G_t = round(G·mix) > 0)."""
    return TrainConfig.from_settings(settings).teacher_rows > 0


def refreshes_basis(settings: Mapping[str, Any]) -> bool:
    return bool(settings.get("basis")) and bool(settings.get("refresh_every"))


def train_params(config: Mapping[str, Any], run: RunSpec) -> dict[str, Any]:
    """What changes a training run's outputs (evaluation-only settings and compute knobs left out)."""
    s = run.settings
    settings = {k: v for k, v in s.items() if k != "test_samples"}
    params = {"run": run.name, "arm": run.arm, "seed": run.seed, "settings": settings,
              "student": model_params(config, s["student"]), "adapter": config["adapters"][s["adapter"]],
              "loopholes": config["loopholes"], "grader": results_grader(config), "rollout": config["rollout"]}
    if refreshes_basis(s):   # a frozen basis reaches the run as its file; re-extraction needs its settings
        params["basis"] = {"name": s["basis"], **config["bases"][s["basis"]]}
    return params


def eval_params(config: Mapping[str, Any], run: RunSpec) -> dict[str, Any]:
    """What changes a run's held-out evaluation (the trained adapter arrives as an input file)."""
    s = run.settings
    return {"seed": run.seed, "settings": {k: s[k] for k in EVAL_SETTINGS if k in s},
            "student": model_params(config, s["student"]), "adapter": config["adapters"][s["adapter"]],
            "loopholes": config["loopholes"], "grader": results_grader(config, reward=False),
            "rollout": config["rollout"]}


def prompt_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """What the toy tokenizer and toy models read of `loopholes`: the modes and the prompt style."""
    spec = LoopholeSpec.from_config(config["loopholes"])
    return {"modes": list(spec.modes), "prompt_style": spec.prompt_style}


def basis_params(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    b = config["bases"][name]
    return {"basis": {"name": name, **b}, "model": model_params(config, b["model"]),
            "adapter": config["adapters"][b["adapter"]],
            "prompt_style": LoopholeSpec.from_config(config["loopholes"]).prompt_style}


def teacher_params(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    t = config["teachers"][name]
    return {"teacher": t, "model": model_params(config, t["model"]), "loopholes": config["loopholes"],
            "grader": results_grader(config), "rollout": config["rollout"]}


@dataclass(frozen=True)
class ComputeSpec:
    """Knobs that change no result (config `compute`, `grader.workers`, `threads_per_job`): in no params."""

    micro_batch_size: int = 32
    gradient_checkpointing: bool = False   # recompute each layer in the backward: far less GPU memory
    checkpoint_layers: int | None = None   # with it: only the first N decoder layers (null: all)
    fused_kernels: bool = True             # vhack.train_kernels in the backward (CUDA with Triton; else ignored)
    share_prompts: bool = True             # the backward runs a group's shared prompt once (vhack.grpo.pack_rows)
    progress: bool = True
    grader_workers: int | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "ComputeSpec":
        return cls(**config.get("compute", {}), grader_workers=config.get("grader", {}).get("workers"))
