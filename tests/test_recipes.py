"""Issue 31: the recipes ship with the package and are addressable by name; ``declip configs`` lists them;
``declip config show`` says where each value came from; an ``optim.lr`` the user sets is the run's peak lr."""
from pathlib import Path

import pytest

from declip.cli import main as cli_main
from declip.config import ConfigError, load_config, own_data_config_path
from declip.recipes import RECIPES_DIR, recipe_names
from declip.train.trainer import train
from helpers import metrics, tiny_overrides, write_tiny_config

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {f"{method}_{model}_yfcc15m" for method in ("clip", "declip", "slip", "filip") for model in ("rn50", "vitb32")
           } | {"defilip_vitb32_yfcc15m", "declip_small_data", "demo", "own_data"}
DATA = ["data.path=pairs.jsonl", "data.root=images"]


def test_every_recipe_is_package_data_and_the_repo_folder_links_to_it():
    assert set(recipe_names()) == RECIPES
    assert RECIPES_DIR == ROOT / "src" / "declip" / "configs"
    assert (ROOT / "configs").is_symlink() and (ROOT / "configs").resolve() == RECIPES_DIR.resolve()
    assert (ROOT / "configs" / "declip_vitb32_yfcc15m.yaml").is_file()  # scripts' and docs' paths still work


def test_a_recipe_loads_by_name_and_a_path_still_works(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the clone: no configs/ folder here
    by_name = load_config("declip_small_data", DATA)
    assert by_name == load_config("declip_small_data.yaml", DATA)
    assert by_name == load_config(RECIPES_DIR / "declip_small_data.yaml", DATA)
    assert by_name.method.augment == "clip"  # the recipe's own setting, not a default
    write_tiny_config(tmp_path / "declip_small_data.yaml", "train.steps=3")
    assert load_config("declip_small_data.yaml").train.steps == 3  # a file of that name wins over the recipe


def test_an_unknown_config_is_one_line_listing_the_recipes(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="nope is neither a file nor a shipped recipe .*declip_small_data"):
        load_config("nope")
    assert cli_main(["train", "--config", "configs/nope.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "recipes: clip_rn50_yfcc15m" in err


def test_declip_configs_lists_each_recipe_with_its_line(capsys):
    assert cli_main(["configs"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert RECIPES <= set(lines)
    assert "The built-in demo" in lines["demo"] and "Defaults for your own data" in lines["own_data"]
    assert "DeCLIP for ~1,000 pairs" in lines["declip_small_data"]  # a '# summary:' line wins over the first one
    assert "DeCLIP vitb32 on YFCC15M" in lines["declip_vitb32_yfcc15m"]  # else the first comment line


def test_config_show_marks_where_each_value_came_from(capsys):
    assert cli_main(["config", "show", "--config", "own_data", "optim.lr=5e-4", "data.source=csv",
                     "data.path=a.csv"]) == 0
    shown = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert shown["optim.lr"].split("#")[1].strip() == "command line (optim.lr=5e-4)"
    assert shown["optim.warmup_steps"].split("#")[1].strip() == "recipe own_data"
    assert shown["model.embed_dim"].split("#")[1].strip() == "preset vit-b-32"
    assert shown["optim.grad_clip"].split("#")[1].strip() == "default"
    assert len(shown) == len([k for k in shown if "." in k]) > 100  # every key, as a dotted name


# --- point 7: the lr the user sets is the lr the run uses -----------------------------------------------------
def test_a_command_line_lr_is_not_scaled_and_the_recipes_own_lr_is():
    recipe = load_config(own_data_config_path(), ["train.batch_size=64"])
    assert recipe.optim.lr_scaling == "sqrt" and recipe.optim.lr_scale(64) == pytest.approx(0.125)
    mine = load_config(own_data_config_path(), ["optim.lr=5e-4", "train.batch_size=64"])
    assert mine.optim.lr_scaling == "none" and mine.optim.lr_scale(64) == 1.0
    assert mine.origins["optim.lr_scaling"].startswith("none because optim.lr is set (command line")
    chosen = load_config(own_data_config_path(), ["optim.lr=5e-4", "optim.lr_scaling=sqrt"])
    assert chosen.optim.lr_scale(64) == pytest.approx(0.125)  # scaling the user's lr: the user's choice


def test_an_lr_in_the_users_own_file_is_not_scaled_either(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("optim:\n  lr: 5.0e-4\n")
    assert load_config(path, ["optim.lr_scaling=sqrt"]).optim.lr_scaling == "sqrt"  # scaling chosen: applied
    path.write_text(own_data_config_path().read_text().replace("lr: 1.0e-3", "lr: 5.0e-4"))  # a copied recipe
    assert load_config(path).optim.lr_scaling == "sqrt"  # the copy chose sqrt for its own lr itself
    path.write_text("optim:\n  lr: 5.0e-4\n")
    assert load_config(path).optim.lr_scaling == "none"


@pytest.mark.usefixtures("one_thread")
def test_an_explicit_lr_on_the_own_data_defaults_is_the_peak_in_metrics(tmp_path):
    overrides = tiny_overrides("model.preset=tiny-vit", "model.text.context_length=16", "eval.builtin=false",
                               f"train.output_dir={tmp_path / 'run'}", "optim.lr=5e-4")
    cfg = load_config(own_data_config_path(), overrides)
    train(cfg)
    lrs = [r["lr"] for r in metrics(tmp_path / "run")]
    assert max(lrs) == pytest.approx(5e-4)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "peak lr 0.0005: optim.lr as written (from command line (optim.lr=5e-4)" in log
