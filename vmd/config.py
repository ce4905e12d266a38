"""Every setting as a typed dataclass; YAML presets, files and dotted overrides, strictly checked.

A config is built from plain data (a preset's YAML, a user's file, ``--set a.b=c``
overrides) by :func:`from_dict`, which rejects unknown keys, wrong types and values
outside their choices before any work starts, naming the key path.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from vmd.config_checks import RANGES, validate
from vmd.runtime.errors import ConfigError, shown


@dataclass
class TaskConfig:
    name: Literal["synthetic", "sudoku", "text"] = "synthetic"
    # synthetic: 2tok (k, k+1), 2tok-nonuniform (P(k) = (k+1)/55), d1, d2 (four tokens), corr (parameter p)
    kind: Literal["2tok", "2tok-nonuniform", "d1", "d2", "corr"] = "2tok"
    p: float = 1.0
    vocab: int = 10
    # sudoku: train on `grids` random complete grids under random masks (solutions), on as many
    # generated puzzles with min_givens-max_givens givens whose givens are never masked (puzzles),
    # or on a user's puzzle file with solutions, e.g. Kaggle's CSV (file); `augment` applies a
    # random validity-preserving symmetry to every training grid
    source: Literal["solutions", "puzzles", "file"] = "solutions"
    file: str = ""
    grids: int = 20000
    min_givens: int = 22
    max_givens: int = 36
    augment: bool = True
    # text: text8 (file empty: downloaded once into the user cache, verified, split 90M / 5M / 5M
    # characters) or your own UTF-8 text (file: a text file, or a folder whose files are read in
    # name order; split by characters 90% / 5% / 5% into train / valid / test), cut into
    # sequences of `length` tokens. A relative file not found from the working directory is also
    # looked up beside the vmd checkout; `tinyshakespeare` names the corpus that ships with vmd.
    # tokenizer: char (one token per character; text8's 27 characters, or every character of
    # your text) or sentencepiece (a BPE model of `vocab_size` pieces trained on the training
    # split; own text only). The vocabulary or tokenizer is stored with the run, which then loads without
    # the corpus.
    length: int = 256
    tokenizer: Literal["char", "sentencepiece"] = "char"
    vocab_size: int = 0


@dataclass
class ModelConfig:
    dim: int = 64
    layers: int = 2
    heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.0
    # attention logits learn a bias per head for each relation of two positions (Sudoku: same
    # row / column / box); needs a task whose positions have structure (sudoku)
    relation_bias: bool = False
    # block diffusion (BD3-LM, method.md §3): B tokens per block, diffused inside a block and
    # autoregressive over blocks; 0 (or the sequence length) is one block, the plain MDM; 1 is an
    # autoregressive model. Must divide the task's length.
    block_size: int = 0
    # positions: learned (one vector per position; Sudoku's layout sums row, column and box) or
    # rotary (RoPE on queries and keys, for text)
    positions: Literal["learned", "rotary"] = "learned"


@dataclass
class LatentConfig:
    dim: int = 8
    encoder_dim: int = 64
    encoder_layers: int = 1
    # the encoder reads x0 and which positions are masked (VADD); false: x0 only, so that z is one
    # plan for the whole sequence that stays valid at every step (pairs with sample.z_policy: once)
    encoder_sees_mask: bool = True
    # gaussian: z in R^dim; categorical: `groups` discrete variables of `components` classes each
    # (method.md §5), seen by the decoder as one-hot codes, with an exact KL (`dim` is unused);
    # mixture: no encoder and no KL, z is one of `components` classes marginalised exactly, each
    # class an output head over one denoiser pass and its weights read off the same pass (per
    # block for block diffusion, drawn anew at each sampling step: vmd/model/mixture.py)
    kind: Literal["gaussian", "categorical", "mixture"] = "gaussian"
    # normal: N(0, I) as in the paper (uniform classes for a categorical z); conditional: a learned
    # p(z | xt), per group of `dim / groups` latent dimensions a mixture of `components` Gaussians
    # (for a categorical z: learned class probabilities); prefix (block diffusion): p(z_b | x0^{<b}),
    # the same family read off the clean blocks before b only, so z_b stays one draw per block
    prior: Literal["normal", "conditional", "prefix"] = "normal"
    components: int = 1
    groups: int = 1
    prior_dim: int = 64
    prior_layers: int = 1
    beta: float = 1.0
    kl_warmup_steps: int = 0
    free_bits: float = 0.0
    # how z becomes each block's adaLN shift, scale and gate: mlp (Linear-SiLU-Linear of z, as in
    # DiT and VADD) or linear (one linear map of z: for short sequences, where this per-sequence
    # readout costs as much as the denoiser's per-token work; docs/results-synthetic.md)
    adaln: Literal["mlp", "linear"] = "mlp"
    # a control: z held at 0 in training, scoring and sampling (the VMD's networks, its latent unused)
    constant: bool = False


@dataclass
class DiffusionConfig:
    schedule: Literal["linear", "cosine"] = "linear"
    antithetic: bool = True
    t_min: float = 1e-3
    # elbo: each masked token's loss weighted by w(t) = -alpha'_t / (1 - alpha_t), the NELBO (1/t
    # for the linear schedule, so nearly clean sequences dominate); flat: weight 1 per masked token,
    # which puts the training signal on heavily masked sequences. The reported nelbo is the bound
    # either way.
    weighting: Literal["elbo", "flat"] = "elbo"
    # block diffusion's variance reduction (BD3-LM): training draws each block's time t from
    # [clip[0], clip[1]] instead of [t_min, 1) (the masking rate itself under the linear schedule);
    # evaluation always uses the full range (the NELBO)
    clip: list[float] = field(default_factory=lambda: [0.0, 1.0])
    # the bound trained: 0 the continuous-time NELBO; k > 0 the exact bound of the sampler that
    # reveals each block's tokens (a one-block model's whole sequence) in k steps, in random order,
    # as many per step as vmd sample reveals (B / k with blocks of B, which k must divide): the NLL
    # that k-step sampler assigns, paying the dependence of tokens revealed together (vmd/steps.py)
    steps: int = 0


@dataclass
class TrainConfig:
    steps: int = 2000
    # the global batch of each optimiser step: under torchrun each of N processes draws
    # batch_size / (N x accumulate) sequences per shard from its own streams (vmd/runtime/distributed.py)
    batch_size: int = 256
    # gradient accumulation: each process takes its share of the batch in this many passes
    # (less memory, the same step); must divide the batch with the number of processes
    accumulate: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    # decay of the EMA weights, ramped as min(ema, (1 + step) / (10 + step)): the ramp stays below
    # 0.999 until step 8990 and below 0.998 until step 4490, so in shorter runs (every CPU preset,
    # at most 5000 steps) it alone sets the decay, and ema only turns the average on (> 0) or off
    # (0); the GPU Sudoku presets (50,000 steps) reach their 0.9995 at step 17,990
    ema: float = 0.999
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 500
    # validation: every `eval_every` steps (a multiple of log_every; 0: never), the NELBO in bits
    # per token of the first `eval_sequences` sequences of the task's validation split (tasks that
    # have one: text), one draw of times per sequence, seed 0, on the training (not EMA) weights
    eval_every: int = 0
    eval_sequences: int = 64
    # start from a trained model (a run directory, a model.safetensors or a bundled name such as
    # sudoku-mdm) instead of random weights; an MDM into a VMD starts the VMD as exactly that MDM
    # (vmd/model/adapt.py). freeze_denoiser: then train only the z path, the encoder and the prior
    init_from: str = ""
    freeze_denoiser: bool = False


@dataclass
class SampleConfig:
    nfe: int = 1
    strategy: Literal["random", "top-prob", "top-margin"] = "random"
    temperature: float = 1.0  # 0 means argmax
    # once: z drawn from the prior at the start; step: redrawn from the prior before every step;
    # posterior: then drawn from the encoder given the previous step's predictions (method.md §5)
    z_policy: Literal["once", "step", "posterior"] = "once"
    num_samples: int = 50000
    batch_size: int = 5000
    seed: int = 0


@dataclass
class DeviceConfig:
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    # fp32; bf16 (autocast, on CUDA or the CPU); fp16 (autocast and a gradient scaler, CUDA only)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # under torchrun: how long (seconds) a process waits for the others, at the rendezvous and at
    # each collective step, before it stops with an error instead of hanging
    timeout: float = 600.0


@dataclass
class Config:
    method: Literal["mdm", "vmd"] = "mdm"
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check one leaf value against its annotated type; int is accepted where float is."""
    if typing.get_origin(tp) is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list such as [0.3, 0.8], got {shown(value)}")
        return [_coerce(v, typing.get_args(tp)[0], f"{path}[{i}]") for i, v in enumerate(value)]
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{path}: {shown(value)} is not valid; choose one of {', '.join(map(str, choices))}")
        return value
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    ok = (
        (tp is bool and isinstance(value, bool))
        or (tp is int and isinstance(value, int) and not isinstance(value, bool))
        or (tp is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (tp is str and isinstance(value, str))
    )
    if not ok:
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {shown(value)} ({type(value).__name__})")
    return float(value) if tp is float else value


def _unknown_key(key: str, choices: list[str], path: str) -> ConfigError:
    near = difflib.get_close_matches(key[:200], choices, n=1)
    hint = f" (did you mean '{near[0]}'?)" if near else ""
    where = shown(f"{path}.{key}" if path else key)
    return ConfigError(f"unknown key {where}{hint}; valid keys here: {', '.join(choices)}")


def _build(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping of keys, got {shown(data)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise _unknown_key(str(key), names, path)
        sub = f"{path}.{key}" if path else key
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value if value is not None else {}, sub)
        else:
            kwargs[key] = _coerce(value, tp, sub)
            check = RANGES.get(sub)
            if check and not check[0](kwargs[key]):
                raise ConfigError(f"{sub}: {shown(value)} is out of range; expected {check[1]}")
    return cls(**kwargs)


def from_dict(data: dict) -> Config:
    """Build and validate a :class:`Config` from nested plain data."""
    cfg = _build(Config, data, "")
    validate(cfg)
    return cfg


# the keys of ``task`` that each task reads (the others keep their defaults and mean nothing to it)
TASK_KEYS = {"synthetic": ("name", "kind", "p", "vocab"),
             "sudoku": ("name", "source", "file", "grids", "min_givens", "max_givens", "augment"),
             "text": ("name", "file", "length", "tokenizer", "vocab_size")}


def task_keys(task: TaskConfig) -> dict:
    """The task's own settings, as ``meta.json`` lists them."""
    return {k: getattr(task, k) for k in TASK_KEYS[task.name]}


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


YAML_VALUES = 100_000  # the most values a YAML document may hold once its aliases are expanded


def _expanded(node, memo: dict) -> int:
    """How many values ``node`` stands for with every alias expanded (aliases share their node, so
    this is counted on the graph, never expanded), stopping early past ``YAML_VALUES``."""
    if id(node) in memo:
        return memo[id(node)]
    total = 1
    if isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = node.value
    else:
        children = []
    for child in children:
        total += _expanded(child, memo)
        if total > YAML_VALUES:
            break
    memo[id(node)] = total
    return total


def safe_yaml(text: str, where: str):
    """``yaml.safe_load`` (no tags that build Python objects), bounded before anything is built: a
    document whose aliases expand to more than ``YAML_VALUES`` values ("billion laughs"), or nested
    past Python's recursion limit, is one ConfigError naming ``where``."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            if _expanded(node, {}) > YAML_VALUES:
                raise ConfigError(f"{where}: its aliases expand to more than {YAML_VALUES:,} values; write the "
                                  "values out, or use fewer aliases")
        except RecursionError:
            raise ConfigError(f"{where}: nested too deeply") from None
        try:
            return loader.construct_document(node)
        except (ValueError, OverflowError) as e:  # e.g. an integer of more digits than Python converts
            raise ConfigError(f"{where}: {str(e).split(';')[0]}") from None
    finally:
        loader.dispose()


def _read_yaml(path: Path) -> dict:
    try:
        data = safe_yaml(path.read_text(), str(path))
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return data


def presets_dir() -> Path:
    """The bundled presets: ``presets/`` of a source checkout (and editable install), or the copy a
    wheel installs as ``vmd/presets``."""
    here = Path(__file__).resolve().parent
    checkout = here.parent / "presets"
    return checkout if checkout.is_dir() else here / "presets"


def list_presets() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def preset_data(name: str) -> dict:
    path = presets_dir() / f"{name}.yaml"
    if not path.is_file():
        names = list_presets()
        near = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise ConfigError(f"unknown preset '{name}'{hint}; available: {', '.join(names)}")
    return _read_yaml(path)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (['a', 'b', 'c'], value), the value read as YAML (so 3 is an int)."""
    if "=" not in text:
        raise ConfigError(f"override {shown(text)} must look like key.path=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {shown(text)} has an empty key")
    try:
        value = safe_yaml(raw, f"override {shown(text)}") if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = merge({}, data)
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {shown(text)}: {shown(p)} is not a section")
        node[parts[-1]] = value
    return data


def load(preset: str | None = None, file: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Resolve a config: defaults < preset < user file < ``--set`` overrides."""
    data: dict = {}
    if preset:
        data = merge(data, preset_data(preset))
    if file:
        data = merge(data, _read_yaml(Path(file)))
    data = apply_overrides(data, overrides or [])
    return from_dict(data)


def load_yaml_text(text: str) -> Config:
    """A config saved with a run (its YAML text)."""
    try:
        data = safe_yaml(text, "saved config")
    except yaml.YAMLError as e:
        raise ConfigError(f"saved config is not valid YAML: {str(e).splitlines()[0]}") from e
    return from_dict(data or {})
