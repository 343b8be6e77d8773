import pytest

from kit.mrcnn.config import config_from
from kit.config import PRESETS, RunConfig, Stage, get_preset
from kit.errors import KitError


def test_every_preset_is_valid_and_round_trips_through_json(tmp_path):
    for name, cfg in PRESETS.items():
        cfg.check()
        path = tmp_path / f"{name}.json"
        cfg.save(path)
        assert RunConfig.load(path) == cfg


def test_study_presets_cover_backbone_by_schedule():
    assert {PRESETS[n].backbone for n in ("r50-heads", "r50-all-aug")} == {"resnet50"}
    assert {PRESETS[n].backbone for n in ("r101-heads", "r101-all-aug")} == {"resnet101"}
    assert not PRESETS["r50-heads"].augmented and PRESETS["r50-all-aug"].augmented
    assert [s.layers for s in PRESETS["r50-heads"].stages] == ["heads"]
    assert PRESETS["r50-heads"].init == "coco"


def test_schedule_is_cumulative():
    cfg = RunConfig(name="x", stages=(Stage("heads", 2), Stage("4+", 3), Stage("all", 1)))
    assert [end for _, end in cfg.schedule] == [2, 5, 6]
    assert cfg.total_epochs == 6


def test_overrides_parse_types_and_reject_unknown_keys():
    cfg = get_preset("tiny", ["image_size=128", "tta=none", "learning_rate=0.1",
                              "rpn_anchor_scales=[4,8,16,32,64]", "train_bn=true"])
    assert cfg.image_size == 128 and cfg.tta == "none" and cfg.learning_rate == 0.1
    assert cfg.rpn_anchor_scales == (4, 8, 16, 32, 64) and cfg.train_bn is True
    with pytest.raises(KitError, match="unknown key 'imge_size'"):
        get_preset("tiny", ["imge_size=128"])
    with pytest.raises(KitError, match="takes a number"):
        get_preset("tiny", ["image_size=big"])
    with pytest.raises(KitError, match="multiple of 64"):
        get_preset("tiny", ["image_size=100"])
    with pytest.raises(KitError, match="unknown preset"):
        get_preset("huge")
    with pytest.raises(KitError, match="choose sgd or adam"):
        get_preset("tiny", ["optimizer=rmsprop"])
    assert config_from(get_preset("tiny", ["optimizer=adam"]).mrcnn_fields()).OPTIMIZER == "ADAM"


def test_stage_override_from_json():
    cfg = get_preset("tiny", ['stages=[{"layers": "heads", "epochs": 3}]'])
    assert cfg.stages == (Stage("heads", 3),)


def test_every_field_has_a_one_line_meaning():
    import dataclasses

    from kit.config import FIELD_HELP

    fields = [f.name for f in dataclasses.fields(RunConfig)]
    assert sorted(FIELD_HELP) == sorted(fields)
    assert all(FIELD_HELP[k].strip() and "\n" not in FIELD_HELP[k] for k in fields)


def test_config_command_prints_every_key_value_and_meaning(capsys):
    import dataclasses
    import json

    from kit import cli
    from kit.config import FIELD_HELP

    assert cli.main(["config", "--preset", "tiny", "--set", "seed=7"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line and not line[0].isspace()}
    cfg = get_preset("tiny", ["seed=7"])
    for f in dataclasses.fields(RunConfig):
        assert f.name in lines, f.name
        assert json.dumps(getattr(cfg, f.name) if f.name != "stages"
                          else [dataclasses.asdict(s) for s in cfg.stages]) in out
        assert FIELD_HELP[f.name] in out
    assert lines["seed"].split()[1] == "7"
    assert cli.main(["config", "--preset", "tiny", "--set", "nope=1"]) == 2
