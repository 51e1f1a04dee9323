"""The blocks the scripts repeat on purpose (reward model, replay, SAC, seeding, ...) stay identical.

Each script stays a single file that can be copied alone, so these blocks are written out in every
script; this test keeps a diff between two scripts down to what truly differs. Because the blocks
are identical, the reward tests run on one script's copy hold for all of them.
"""

import os
import re

import pytest

from conftest import ROOT

SCRIPTS = ["dqn_clip_cartpole.py", "sac_clip_mountaincar.py", "sac_clip_humanoid.py"]
EVERY_SCRIPT_HAS = {"clip-reward", "replay-buffer", "plumbing"}
BLOCK = re.compile(r"^# ==== BEGIN SHARED BLOCK: ([\w-]+) .*?\n(.*?)^# ==== END SHARED BLOCK: \1 ====$",
                   re.DOTALL | re.MULTILINE)


def shared_blocks(script):
    with open(os.path.join(ROOT, script)) as f:
        text = f.read()
    blocks = {}
    for name, body in BLOCK.findall(text):
        assert name not in blocks, f"{script}: block {name} appears twice"
        blocks[name] = body
    assert text.count("BEGIN SHARED BLOCK") == text.count("END SHARED BLOCK") == len(blocks), script
    return blocks


def test_every_script_has_the_core_blocks():
    for script in SCRIPTS:
        assert EVERY_SCRIPT_HAS <= set(shared_blocks(script)), script


@pytest.mark.parametrize("name", sorted({name for script in SCRIPTS for name in shared_blocks(script)}))
def test_block_is_identical_wherever_it_appears(name):
    copies = {script: shared_blocks(script)[name] for script in SCRIPTS if name in shared_blocks(script)}
    reference_script, reference = next(iter(copies.items()))
    assert len(reference.strip().splitlines()) > 3
    for script, body in copies.items():
        assert body == reference, f"block {name!r} differs between {reference_script} and {script}"


@pytest.mark.parametrize("script, ceiling", [("dqn_clip_cartpole.py", 450), ("sac_clip_mountaincar.py", 600),
                                             ("sac_clip_humanoid.py", 650)])
def test_the_method_comes_first_and_the_map_names_what_exists(script, ceiling):
    """A reader reads from the top to the end of `main` (at most `ceiling` lines, `main` at most 130); the
    plumbing sits below it; every `name` of the module docstring's map is in the file (a rename shows here)."""
    import ast
    import importlib

    with open(os.path.join(ROOT, script)) as f:
        text = f.read()
    tree = ast.parse(text)
    main = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main")
    assert main.end_lineno <= ceiling and main.end_lineno - main.lineno + 1 <= 130, (main.lineno, main.end_lineno)
    assert text.count("\n", 0, text.index("BEGIN SHARED BLOCK: plumbing")) > main.end_lineno
    module = importlib.import_module(script[: -len(".py")])
    docstring = ast.get_docstring(tree)
    names = re.findall(r"`([A-Za-z_][\w.]*)`", docstring[docstring.index("Where each part is"):])
    assert len(names) >= 5
    for name in names:
        if not name.startswith("-"):
            owner, *attribute = name.split(".")
            assert hasattr(module, owner) and all(hasattr(getattr(module, owner), a) for a in attribute), name
