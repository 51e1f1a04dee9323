"""The README's copy-the-reward example runs as written and gives the reward of the formula."""

import os
import re

import numpy as np
import open_clip
import torch

from conftest import ROOT, cartpole
from test_reward import direct_reward, sweep_frames


def readme_example() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    section = text[text.index("### The CLIP reward in your own project"):]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_readme_reward_example_runs_as_written(tiny_clip, monkeypatch):
    """The example's model download is the only thing replaced: by the tiny model (no network in tests)."""
    name, _, model = tiny_clip
    asked, tokenizer = [], open_clip.get_tokenizer(name)
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: asked.append((a, k)) or model)
    monkeypatch.setattr(open_clip, "get_tokenizer", lambda *a: tokenizer)
    frames = sweep_frames((64, 48), n=6)  # not the model's size: the example's reward model resizes them
    namespace = {"frames": frames}
    exec(readme_example(), namespace)
    assert asked == [(("ViT-B-32",), {"pretrained": "laion2b_s34b_b79k"})]
    rewards = namespace["rewards"]
    assert isinstance(rewards, torch.Tensor) and rewards.shape == (6,) and rewards.dtype == torch.float32
    cfg = open_clip.get_model_preprocess_cfg(model)
    expected = direct_reward(model, tokenizer, frames, ["a humanoid robot kneeling"],
                             ["a humanoid robot"], 0.5, cfg["mean"], cfg["std"], size=namespace["reward_model"].image_size)
    np.testing.assert_allclose(rewards, expected, atol=2e-6)
    assert isinstance(namespace["reward_model"], cartpole.CLIPReward)


def test_readmes_reward_report_commands_parse_into_the_reports_flags():
    """Every `benchmarks/reward_report.py` command of the README and docs/ (continued lines joined) names flags that
    exist."""
    import glob
    import shlex

    import tyro

    from conftest import load_benchmark

    text = ""
    for path in [os.path.join(ROOT, "README.md"), *glob.glob(os.path.join(ROOT, "docs", "*.md"))]:
        with open(path) as f:
            text += f.read().replace("\\\n", " ") + "\n"
    commands = [line.strip() for line in text.splitlines() if line.strip().startswith("python benchmarks/reward_report.py")]
    assert len(commands) >= 3
    report = load_benchmark("reward_report")
    for command in commands:  # tyro stops the test with a usage error on a flag that does not exist
        tyro.cli(report.Args, args=shlex.split(command.split("#")[0])[2:])
