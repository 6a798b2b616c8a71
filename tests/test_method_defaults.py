"""Naming a method brings that method's reference loss weights and heads (config_method.METHOD_DEFAULTS), on the
own-data defaults and on the demo alike, unless the user or a --config recipe sets them (issue 38). The
reference values are read from the shipped reference recipes, not restated here."""
import pytest
import yaml

from declip.cli import main as cli_main
from declip.config import load_config
from declip.recipes import demo_config_path, own_data_config_path, recipe_path

METHODS = ["clip", "declip", "slip", "filip", "defilip"]
OWN_DATA = ["data.source=csv", "data.path=pairs.csv"]


def reference_method_section(name: str) -> dict:
    """The method section of the shipped ViT-B/32 reference recipe of ``name`` (every key traced to
    Sense-GVT/DeCLIP's experiment configs in its comments)."""
    return yaml.safe_load(recipe_path(f"{name}_vitb32_yfcc15m").read_text())["method"]


@pytest.mark.parametrize("name", METHODS)
def test_naming_a_method_on_own_data_brings_its_reference_weights_and_heads(name):
    cfg = load_config(own_data_config_path(), [*OWN_DATA, f"method.name={name}"])
    reference = reference_method_section(name)
    assert reference["name"] == name
    for key, value in reference.items():
        assert getattr(cfg.method, key) == value, f"method.name={name}: method.{key}"
    origin = f"default for method.name={name}"
    weights = [k for k in reference if k.endswith("_weight")]
    assert all(cfg.origins[f"method.{k}"] == origin for k in weights), (name, weights)


def test_slip_and_filip_on_own_data_no_longer_keep_declips_weights():
    """The issue's case: SLIP trained at clip_weight 0.4 (DeCLIP's) on the own-data defaults."""
    slip = load_config(own_data_config_path(), [*OWN_DATA, "method.name=slip"]).method
    assert (slip.clip_weight, slip.simclr_weight) == (1.0, 1.0)
    filip = load_config(own_data_config_path(), [*OWN_DATA, "method.name=filip"]).method
    assert (filip.clip_weight, filip.filip_weight) == (0.0, 1.0)
    declip = load_config(own_data_config_path(), OWN_DATA).method
    assert (declip.clip_weight, declip.simsiam_weight, declip.mlm_weight, declip.nn_weight) == (0.4, 0.2, 0.2, 0.2)


@pytest.mark.parametrize("name", ["slip", "filip", "defilip"])
def test_the_demo_brings_the_methods_weights_and_keeps_its_own_head_sizes(name):
    cfg = load_config(demo_config_path(), [f"method.name={name}"])
    for key, value in reference_method_section(name).items():
        if key.endswith("_weight"):
            assert getattr(cfg.method, key) == value, f"method.{key}"
    demo = yaml.safe_load(demo_config_path().read_text())["method"]
    assert cfg.method.queue_size == demo["queue_size"] != 65536  # the demo's sizes: a recipe value wins


def test_a_users_key_and_a_recipes_values_win_over_the_method_defaults(tmp_path):
    explicit = load_config(own_data_config_path(), [*OWN_DATA, "method.name=slip", "method.clip_weight=0.5"])
    assert explicit.method.clip_weight == 0.5 and explicit.origins["method.clip_weight"].startswith("command line")
    assert explicit.method.simclr_weight == 1.0
    small = yaml.safe_load(recipe_path("declip_small_data").read_text())["method"]
    recipe = load_config("declip_small_data", ["method.name=defilip", "data.path=p.jsonl", "data.root=images"])
    assert recipe.method.clip_weight == small["clip_weight"] and recipe.method.nn_weight == small["nn_weight"]
    assert recipe.method.filip_weight == 0.2  # the recipe sets none: DeFILIP's own
    mine = tmp_path / "mine.yaml"
    mine.write_text("method:\n  name: filip\n  clip_weight: 0.3\n")
    own = load_config(mine, [])
    assert (own.method.clip_weight, own.method.filip_weight) == (0.3, 1.0)
    assert own.origins["method.clip_weight"] == str(mine)


def test_config_show_names_the_method_default_as_the_origin(capsys):
    assert cli_main(["config", "show", *OWN_DATA, "method.name=slip"]) == 0
    lines = {line.split(":")[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["method.clip_weight"].split("#")[0].split(":")[1].strip() == "1.0"
    assert lines["method.clip_weight"].endswith("# default for method.name=slip")
    assert lines["method.simclr_weight"].endswith("# default for method.name=slip")
    assert lines["method.name"].endswith("# command line (method.name=slip)")
