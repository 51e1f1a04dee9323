"""The commands of the README and docs/ are checked against the code they start.

Each is read by what it starts: a script's own parser and range checks, a benchmark's parser, run_all.sh's
option parsing (with --dry-run, so nothing trains), pytest's paths, options and -k selection, bash's syntax
check, the attributes a `python -c` snippet uses; the action baselines' snippet runs. A flag's rename, a removed
option or a moved file fails here. Not checked: the `git clone` and `pip` lines (the CI runs those).
"""

import glob
import os
import re
import shlex
import subprocess

import pytest
import tyro

from conftest import ROOT, cartpole, humanoid, load_benchmark, mountaincar

SCRIPTS = {"dqn_clip_cartpole.py": cartpole, "sac_clip_mountaincar.py": mountaincar, "sac_clip_humanoid.py": humanoid}
# The docs' placeholders, as a reader fills them in.
PLACEHOLDERS = {"S": "1", "TASK": "kneeling", "LR": "2.3e-3"}
STARTS = ("python ", "bash ", "taskset ", "git ", "pip ")


def doc_commands() -> list[tuple[str, str]]:
    """(page, command) for every command of the README and docs/: indented code lines and `inline` spans (a span
    may wrap over lines), continued lines joined, comments dropped."""
    found = []
    for path in [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]:
        with open(path) as f:
            text = f.read().replace("\\\n", " ")
        page = os.path.relpath(path, ROOT)
        text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)  # fenced blocks hold Python, not commands
        lines = [line.strip() for line in text.splitlines() if line.startswith("    ")]
        spans = [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", text)]
        found += [(page, command) for command in lines + spans if command.startswith(STARTS)]
    return found


def words_of(command: str) -> list[str]:
    words = shlex.split(command, comments=True)
    if words[0] == "taskset":  # `taskset -c 0 python ...`: pinned to a core
        words = words[3:]
    return [PLACEHOLDERS.get(word, word) for word in words]


COMMANDS = doc_commands()


def short(value):  # a test's id: the page and the command's start
    return value[:60] if isinstance(value, str) else None


def test_the_docs_hold_the_commands_a_reader_needs():
    """The extraction finds them: every script, the grid, the reward report and the test command."""
    starts = {" ".join(words_of(command)[:2]) for _, command in COMMANDS}
    assert len(COMMANDS) >= 40
    assert {f"python {script}" for script in SCRIPTS} | {"bash run_all.sh", "python benchmarks/reward_report.py",
                                                         "python -m"} <= starts


@pytest.mark.parametrize("page, command", [c for c in COMMANDS if words_of(c[1])[1] in SCRIPTS],
                         ids=short)
def test_a_scripts_command_parses_and_passes_its_checks(page, command):
    words = words_of(command)
    module = SCRIPTS[words[1]]
    args = tyro.cli(module.Args, args=words[2:])  # a flag that does not exist stops here with a usage error
    if module is humanoid:
        args.prompt = module.goal_prompts(args)
    module.check_flags(args, module.RANGES)


@pytest.mark.parametrize("page, command", [c for c in COMMANDS if words_of(c[1])[1].startswith("benchmarks/")],
                         ids=short)
def test_a_benchmarks_command_parses(page, command):
    words = words_of(command)
    path = os.path.join(ROOT, words[1])
    assert os.path.isfile(path), f"{page}: {words[1]} does not exist"
    if words[0] == "bash":
        assert subprocess.run(["bash", "-n", path]).returncode == 0
    else:
        tyro.cli(load_benchmark(os.path.basename(path)[: -len(".py")]).Args, args=words[2:])


@pytest.mark.parametrize("page, command", [c for c in COMMANDS if words_of(c[1])[:2] == ["bash", "run_all.sh"]],
                         ids=short)
def test_a_grid_command_is_accepted_by_run_all(page, command, tmp_path):
    """With --dry-run every option is parsed and checked, and the grid's commands printed; --summary-only reads
    the folder it is given (here one that does not exist, which it says in one sentence)."""
    flags = words_of(command)[2:]
    if "--summary-only" in flags:
        flags += ["--output-dir", str(tmp_path / "nothing")]
    result = subprocess.run(["bash", os.path.join(ROOT, "run_all.sh"), *flags, "--dry-run"], capture_output=True,
                            text=True, cwd=ROOT, timeout=120)
    if "--summary-only" in flags:
        assert result.returncode == 1 and result.stderr.startswith("run_all.sh: --summary-only: there is no folder"), result
    else:
        assert result.returncode == 0 and result.stdout.startswith("python "), (command, result.stderr)


@pytest.mark.parametrize("page, command", [c for c in COMMANDS if words_of(c[1])[:3] == ["python", "-m", "pytest"]],
                         ids=short)
def test_a_test_command_names_paths_options_and_tests_that_exist(page, command):
    """Its paths exist; `-n` and `--dist` have pytest-xdist installed; `--runslow` is the suite's own option;
    `-k NAME` selects at least one test of the paths named."""
    import importlib.util

    words, paths = words_of(command)[3:], []
    with open(os.path.join(ROOT, "tests", "conftest.py")) as f:
        conftest = f.read()
    while words:
        word = words.pop(0)
        if word in ("-n", "--dist"):
            assert importlib.util.find_spec("xdist") and words.pop(0) in ("auto", "worksteal"), command
        elif word == "--runslow":
            assert 'addoption("--runslow"' in conftest, command
        elif word == "-k":
            name = words.pop(0)
            tests = "".join(open(path).read() for path in paths)
            assert re.search(rf"def test_\w*{name}", tests), f"{page}: -k {name} selects no test of {paths}"
        elif word != "-q":
            assert os.path.exists(os.path.join(ROOT, word)), f"{page}: {word!r} in {command!r}"
            paths += [os.path.join(ROOT, word)] if word.endswith(".py") else glob.glob(os.path.join(ROOT, word, "*.py"))


SNIPPETS = sorted({words_of(command)[2] for _, command in COMMANDS if words_of(command)[:2] == ["python", "-c"]})


@pytest.mark.parametrize("code", SNIPPETS, ids=lambda code: code[:60])
def test_a_python_snippet_compiles_and_the_short_ones_run(code, capsys):
    """Every module attribute a snippet uses exists; the action baselines' snippet runs as written (in this process,
    whose scripts are imported already: seconds of physics per task) and gives the README's task table. The others
    (600 MB checkpoints of random weights) do not run."""
    import ast
    import importlib

    compiled = compile(code, "<docs>", "exec")
    tree = ast.parse(code)
    modules = {alias.asname or alias.name: importlib.import_module(alias.name)
               for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    for node in ast.walk(tree):  # every module.attribute the snippet uses exists (a rename shows here)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
            assert hasattr(modules[node.value.id], node.attr), f"{node.value.id}.{node.attr} in {code!r}"
    if "action_baselines" in code:
        exec(compiled, {})
        printed = eval(capsys.readouterr().out)  # the dict the snippet prints: task -> figures
        assert set(printed) == set(humanoid.TASKS)
        with open(os.path.join(ROOT, "README.md")) as f:
            table = {row[0]: row[1:] for row in re.findall(r"^\| `([\w-]+)` \| \".*?\" \| .*? \| (\d+)% \| (\d+)% \|$",
                                                          f.read(), re.MULTILINE)}
        assert set(table) == set(humanoid.TASKS)
        for task, figures in printed.items():  # the README's baselines are what the code gives
            assert set(figures) == {f"{kind}_actions_{figure}" for kind in ("zero", "random")
                                    for figure in ("pose_fraction", "success_rate")}
            shown = [f"{100 * figures[f'{kind}_actions_pose_fraction']:.0f}" for kind in ("zero", "random")]
            assert tuple(shown) == table[task], (task, shown, table[task])
