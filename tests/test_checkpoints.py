"""Long runs survive: checkpoints, resuming, SIGTERM and Ctrl-C, progress with an ETA, and W&B tracking.

A run stopped and resumed must end exactly as one that never stopped (same seed, buffer saved, CPU):
same final weights, same logged curve.
"""

import glob
import os
import signal

import numpy as np
import open_clip
import pytest
import torch

from conftest import cartpole, humanoid, mountaincar, needs_gl, read_scalars

FLAGS = {  # short runs whose rollouts end at the listed steps, learning starting after the first ones
    cartpole: dict(num_envs=2, total_timesteps=600, learning_starts=200, train_frequency=100, gradient_steps=10,
                   episode_length=50),
    mountaincar: dict(num_envs=2, total_timesteps=384, learning_starts=96, train_frequency=32, gradient_steps=8,
                      batch_size=32, episode_length=50),
    humanoid: dict(num_envs=2, total_timesteps=300, learning_starts=100, train_frequency=50, gradient_steps=4,
                   batch_size=32, hidden_size=32, episode_length=40),
}
STOP_AT = {cartpole: 350, mountaincar: 200, humanoid: 170}  # transitions stored when SIGTERM arrives


def short_args(module, folder, **overrides):
    settings = dict(FLAGS[module], clip_model="unused", eval_episodes=1, landscape_points=3, buffer_size=2000,
                    clip_precision="fp32", save_model=True, checkpoint_interval=10**9, output_dir=str(folder), seed=1)
    return module.Args(**{**settings, **overrides})


def tiny_reward(module, tiny_clip):
    name, _, model = tiny_clip
    return module.CLIPReward(model, open_clip.get_tokenizer(name), ("a robot kneeling",), ("a robot",), alpha=0.5)


def sigterm_when_stored(module, monkeypatch, transitions: int):
    """This process gets SIGTERM right after the replay buffer has stored `transitions` (mid-rollout)."""
    add = module.ReplayBuffer.add

    def add_then_signal(self, *transition):
        slots = add(self, *transition)
        if self.pos == transitions:
            os.kill(os.getpid(), signal.SIGTERM)
        return slots

    monkeypatch.setattr(module.ReplayBuffer, "add", add_then_signal)


def only_run_dir(folder):
    (run_dir,) = glob.glob(os.path.join(folder, "*"))
    return run_dir


def curves(run_dir) -> dict:
    return {tag: values for tag, values in read_scalars(run_dir).items() if tag != "charts/SPS"}


def assert_same_run(whole: dict, resumed: dict):
    assert resumed["global_step"] == whole["global_step"] and resumed["gradient_steps_done"] == whole["gradient_steps_done"]
    expected, weights = torch.load(whole["model_path"]), torch.load(resumed["model_path"])
    flat = lambda d: {f"{k}.{n}": v for k, sub in d.items() for n, v in sub.items()} if isinstance(  # noqa: E731
        next(iter(d.values())), dict) else d
    expected, weights = flat(expected), flat(weights)
    assert expected.keys() == weights.keys()
    for key in expected:
        assert torch.equal(expected[key], weights[key]), key
    whole_curves, resumed_curves = curves(whole["run_dir"]), curves(resumed["run_dir"])
    assert whole_curves.keys() == resumed_curves.keys()
    for tag in whole_curves:
        assert np.array_equal(resumed_curves[tag], whole_curves[tag], equal_nan=True), tag
    assert len(whole_curves["losses/td_loss"]) >= 2 and len(whole_curves["charts/episodic_return"]) >= 4


@pytest.mark.parametrize("module", [cartpole, mountaincar, pytest.param(humanoid, marks=needs_gl)],
                         ids=["cartpole", "mountaincar", "humanoid"])
def test_a_run_stopped_by_sigterm_and_resumed_ends_as_if_never_stopped(module, tiny_clip, tmp_path, monkeypatch,
                                                                        capsys):
    whole = module.main(short_args(module, tmp_path / "whole"), reward_model=tiny_reward(module, tiny_clip))
    with monkeypatch.context() as patch:
        sigterm_when_stored(module, patch, STOP_AT[module])
        with pytest.raises(SystemExit) as stopped:
            module.main(short_args(module, tmp_path / "stopped"), reward_model=tiny_reward(module, tiny_clip))
    assert stopped.value.code == 143
    run_dir = only_run_dir(tmp_path / "stopped")
    rollout = FLAGS[module]["train_frequency"]
    checkpoint_step = -(-STOP_AT[module] // rollout) * rollout  # the end of the rollout the signal came in
    assert [os.path.basename(p) for p in glob.glob(os.path.join(run_dir, "checkpoint_*.pt"))] == [
        f"checkpoint_{checkpoint_step:012d}.pt"]
    assert not os.path.exists(os.path.join(run_dir, "results.json"))  # not finished
    printed = capsys.readouterr().out
    assert f"stopped at step {checkpoint_step} (SIGTERM); to go on: python {module.__name__}.py --resume {run_dir}" in printed
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # given back

    resumed = module.main(module.Args(resume=run_dir), reward_model=tiny_reward(module, tiny_clip))
    assert resumed["run_dir"] == run_dir
    assert_same_run(whole, resumed)
