"""The README is what a newcomer reads in 3 minutes (issue 31): it stays short and narrow, opens with the Quick
start whose test command is the one CI runs, shows a train command that loads as written, and every docs/ page it
links exists. Everything longer lives in docs/, which these checks keep reachable."""
import re
from pathlib import Path

from declip.config import load_config
from helpers import readme_commands

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_LINES, MAX_WIDTH = 200, 120


def _text() -> str:
    return README.read_text(encoding="utf-8")


def _section(text: str, title: str) -> str:
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_readme_length_and_width():
    lines = _text().splitlines()
    assert len(lines) <= MAX_LINES, f"README.md has {len(lines)} lines (limit {MAX_LINES}): move detail to docs/"
    wide = [(i, len(line)) for i, line in enumerate(lines, 1) if len(line) > MAX_WIDTH]
    assert not wide, f"README.md lines over {MAX_WIDTH} characters (line, length): {wide}"


def test_readme_opens_with_quick_start_and_two_commands_the_second_what_ci_runs():
    text = _text()
    assert text.startswith("# declip\n\n## Quick start\n\n```bash\n"), text[:80]
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line.strip()]
    assert len(commands) == 2, commands
    assert commands[0].endswith(".venv/bin/declip train")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert commands[1] in ci, "Quick start command (2) must stay the command .ci/run runs"


def test_every_docs_link_in_readme_resolves():
    targets = re.findall(r"\]\((docs/[^)#\s]+)(?:#[^)]*)?\)", _text())
    assert len(targets) >= 9, targets  # the index and the eight topic pages at least
    missing = sorted({t for t in targets if not (ROOT / t).is_file()})
    assert not missing, f"README.md links to missing docs pages: {missing}"


def test_docs_pages_link_to_existing_files():
    """The moved material links between pages; a renamed page must not leave a dead link behind."""
    missing = []
    for page in sorted((ROOT / "docs").glob("*.md")):
        for target in re.findall(r"\]\(([^)#\s:]+\.md)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if not (page.parent / target).resolve().is_file():
                missing.append(f"{page.name} -> {target}")
    assert not missing, missing


def _recipe_path(name: str) -> Path:
    """A recipe by name or path. The shipped-by-name lookup (issue 31 point 1) is another change; until it lands
    a bare name is read from configs/NAME.yaml, which is where the shipped recipes come from."""
    path = Path(name)
    return path if path.suffix in (".yaml", ".yml") else ROOT / "configs" / f"{name}.yaml"


def test_readme_own_data_train_command_loads_as_written():
    section = _section(_text(), "Train on your own data")
    commands = [argv for argv in readme_commands(section) if argv[0] == "train"]
    assert commands, section[:300]
    argv = commands[0][1:]
    assert argv[0] == "--config", argv
    overrides = [a for a in argv[2:] if "=" in a and not a.startswith("--")]
    cfg = load_config(_recipe_path(argv[1]), overrides)
    assert cfg.data.source == "manifest" and cfg.data.path == "captions.jsonl" and cfg.data.root == "images"
    assert cfg.method.name == "declip" and cfg.method.nn_exclude_self  # the small-data recipe, not the defaults


def test_readme_scale_out_shows_a_literal_torchrun_line_and_gpu_choice():
    section = _section(_text(), "Scale out")
    assert re.search(r"^torchrun --nproc_per_node 8 -m declip\.cli train --config declip_vitb32_yfcc15m ", section,
                     re.M), section[:300]
    assert "scripts/slurm_declip.sbatch" in section and (ROOT / "scripts" / "slurm_declip.sbatch").is_file()
    assert "CUDA_VISIBLE_DEVICES=1" in section and "train.device=cuda:1" in section


def test_readme_family_table_numbers_are_the_results_files():
    """Every mean +- std in the README's family table is a cell of benchmarks/results/learning_family*.md: one
    number per recipe and set, taken from the results, not retyped (issue 38)."""
    results = "".join((ROOT / "benchmarks" / "results" / f"learning_family{s}.md").read_text(encoding="utf-8")
                      for s in ("", "_s900"))
    table = _section(_text(), "Which method / recipe when").split("| method (crop scale)", 1)[1].split("\n\n", 1)[0]
    cells = re.findall(r"(\d+\.\d)±(\d+\.\d)", table)
    assert len(cells) >= 60, table[:300]
    missing = [f"{m}±{s}" for m, s in cells if f"{m} +- {s}" not in results]
    assert not missing, f"README family-table cells not in the results files: {missing}"


def test_the_demo_duration_is_the_same_in_declip_configs_and_the_readme():
    from declip.recipes import demo_config_path, summary

    configs = re.search(r"~(\d+) min", summary(demo_config_path()))
    readme = re.search(r"about (\d+) minutes on 2 CPU cores", _section(_text(), "Quick start"))
    assert configs and readme and configs.group(1) == readme.group(1), (summary(demo_config_path()), readme)
