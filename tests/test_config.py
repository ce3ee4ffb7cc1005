"""Run configuration: YAML, overrides, type conversion and the errors for typos."""

from dataclasses import dataclass, field

import pytest

from acorn.config import load, parse_overrides, read_yaml, to_yaml
from acorn.errors import AcornError
from acorn.model.transformer import ModelConfig
from acorn.train.optim import OptimConfig


@dataclass
class Run:
    out: str = "runs/x"
    steps: int = 10
    note: str | None = None
    compile: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


def test_layers_defaults_file_overrides(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("steps: 50\nmodel:\n  preset: nano\n  n_layer: 3\noptim:\n  lr: 0.01\n")
    r = load(Run, cfg, ["--optim.lr", "1e-3", "--model.d_model=64", "--compile", "yes", "--note", "none"])
    assert (r.steps, r.optim.lr, r.compile, r.note) == (50, 1e-3, True, None)
    # preset values, then the file's and the overrides' changes, then derived values
    assert (r.model.vocab_size, r.model.n_layer, r.model.d_model, r.model.head_dim) == (2048, 3, 64, 16)


def test_resolved_config_round_trips_through_yaml(tmp_path):
    r = load(Run, None, ["--model.preset", "nano", "--optim.schedule", "wsd"])
    p = tmp_path / "resolved.yaml"
    p.write_text(to_yaml(r))
    assert load(Run, p) == r


@pytest.mark.parametrize("args, message", [
    (["--optim.lrr", "1"], "unknown config key optim.lrr; optim has: optimizer, lr"),
    (["--steps", "x"], "steps is a number"),
    (["--steps", "1.5"], "steps is a number"),
    (["--optim.schedule", "linear"], "must be one of cosine, wsd, constant"),
    (["--compile", "maybe"], "true or false"),
    (["--model.preset", "huge"], "unknown model preset"),
    (["--steps"], "needs a value"),
    (["steps", "3"], "unexpected argument"),
])
def test_bad_overrides_name_the_key(args, message):
    with pytest.raises(AcornError, match=message):
        load(Run, None, args)


def test_bad_yaml_files(tmp_path):
    with pytest.raises(AcornError, match="no such config file"):
        read_yaml(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(AcornError, match="not valid YAML"):
        read_yaml(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(AcornError, match="mapping"):
        read_yaml(tmp_path / "list.yaml")


def test_parse_overrides_nests_and_normalises_dashes():
    assert parse_overrides(["--a.b-c", "1", "--d=2"]) == {"a": {"b_c": "1"}, "d": "2"}


def test_section_overrides_keep_the_stage_defaults():
    from acorn.train.pretrain import PretrainConfig
    from acorn.train.sft import SFTConfig

    sft = load(SFTConfig, None, ["--train.micro_batch", "4"])
    assert sft.train.micro_batch == 4 and sft.train.max_steps == SFTConfig().train.max_steps == 0
    assert sft.optim.lr == SFTConfig().optim.lr != OptimConfig().lr
    # A model override re-derives from the default preset (head_dim follows d_model).
    pre = load(PretrainConfig, None, ["--model.d_model", "128"])
    assert pre.model.preset == "micro" and pre.model.n_layer == ModelConfig.from_preset("micro").n_layer
    assert pre.model.head_dim == 128 // pre.model.n_head


def test_a_model_override_keeps_a_presetless_default_model():
    """CollapseConfig's own 2 x 64 model: one key changed keeps the rest (it used to fall back
    to ModelConfig's class defaults, 4 x 256); what __post_init__ derived is derived again."""
    from acorn.synth.collapse import CollapseConfig

    default = CollapseConfig().model
    m = load(CollapseConfig, None, ["--model.vocab_size", "512"]).model
    assert (m.vocab_size, m.n_layer, m.d_model, m.n_head, m.n_kv_head, m.max_seq_len) == \
        (512, default.n_layer, default.d_model, default.n_head, default.n_kv_head, default.max_seq_len)
    assert default.n_kv_head != default.n_head  # declared, so kept rather than derived again
    wide = load(CollapseConfig, None, ["--model.d_model", "128"]).model
    assert wide.head_dim == 128 // default.n_head and wide.d_ff == ModelConfig(d_model=128).d_ff
