"""The CLIP reward against the paper's formula, batching, checkpoints and precision choice."""

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from conftest import cartpole


def sweep_frames(size, n=12):
    frames, _ = cartpole.landscape_frames(size, np.linspace(-1.5, 1.5, n))
    return frames


def direct_reward(model, tokenizer, frames, goal, baseline, alpha, mean, std):
    """R = 1 - ½‖M(s - g)‖² written out from the paper, in float64 with an explicit matrix M."""
    with torch.no_grad():
        x = torch.tensor(frames).permute(0, 3, 1, 2).float() / 255
        x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        s = F.normalize(model.encode_image(x), dim=-1).double().numpy()
        g = F.normalize(model.encode_text(tokenizer(list(goal))), dim=-1).double().numpy().mean(0)
        b = F.normalize(model.encode_text(tokenizer(list(baseline))), dim=-1).double().numpy().mean(0)
    d = g - b
    M = alpha * np.outer(d, d) / (d @ d) + (1 - alpha) * np.eye(len(g))
    return np.array([1 - 0.5 * np.sum((M @ (si - g)) ** 2) for si in s])


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("prompts", [
    (("pole vertically upright on top of the cart",), ("pole and cart",)),
    (("pole vertically upright on top of the cart", "a balanced pole", "an upright pole on a cart"),
     ("pole and cart", "a cart")),
])
def test_reward_matches_the_formula(tiny_clip, tiny_reward, alpha, prompts):
    name, _, model = tiny_clip
    goal, baseline = prompts
    reward_model = tiny_reward(goal, baseline, alpha)
    frames = sweep_frames(reward_model.image_size)
    cfg = open_clip.get_model_preprocess_cfg(model)
    expected = direct_reward(model, open_clip.get_tokenizer(name), frames, goal, baseline, alpha,
                             cfg["mean"], cfg["std"])
    np.testing.assert_allclose(reward_model(frames), expected, atol=2e-6)


def test_alpha_zero_is_cosine_similarity(tiny_clip, tiny_reward):
    name, _, model = tiny_clip
    reward_model = tiny_reward(alpha=0.0)
    frames = sweep_frames(reward_model.image_size)
    s = reward_model.embed_images(frames)
    g = F.normalize(model.encode_text(open_clip.get_tokenizer(name)(
        ["pole vertically upright on top of the cart"])), dim=-1)[0]
    np.testing.assert_allclose(reward_model(frames), (s @ g).numpy(), atol=2e-6)


def test_alpha_one_only_counts_the_goal_baseline_direction(tiny_reward):
    """With α = 1, moving s orthogonally to d = g - b does not change the reward."""
    reward_model = tiny_reward(alpha=1.0)
    d = reward_model.goal - reward_model.baseline
    s = F.normalize(torch.randn(5, len(d), generator=torch.Generator().manual_seed(0)), dim=-1)
    orthogonal = torch.randn(len(d), generator=torch.Generator().manual_seed(1))
    orthogonal -= (orthogonal @ d) / (d @ d) * d
    before = reward_model.rewards_from_embeddings(s)
    after = reward_model.rewards_from_embeddings(s + orthogonal)
    torch.testing.assert_close(before, after, atol=1e-5, rtol=0)
    assert torch.allclose(reward_model.rewards_from_embeddings(reward_model.goal[None]), torch.ones(1))


def test_batched_equals_one_at_a_time(tiny_reward):
    frames = sweep_frames(tiny_reward().image_size, n=10)
    batched = tiny_reward(alpha=0.5, batch_size=256)(frames)
    chunked = tiny_reward(alpha=0.5, batch_size=3)(frames)
    single = np.concatenate([tiny_reward(alpha=0.5)(frames[i: i + 1]) for i in range(len(frames))])
    np.testing.assert_allclose(chunked, batched, atol=1e-6)
    np.testing.assert_allclose(single, batched, atol=1e-6)


def test_frames_of_another_size_are_resized(tiny_reward):
    reward_model = tiny_reward()
    native = sweep_frames(reward_model.image_size, n=4)
    large = sweep_frames((128, 128), n=4)
    rewards = reward_model(large)
    assert rewards.shape == (4,) and np.isfinite(rewards).all()
    # A bicubic resize of a re-rendered larger frame is close to the native frame, not identical.
    assert np.abs(rewards - reward_model(native)).max() < 0.05


def test_checkpoint_file_gives_the_same_rewards(tiny_clip, tiny_reward):
    name, checkpoint, _ = tiny_clip
    model, tokenizer = cartpole.load_clip(name, checkpoint, "cpu")
    reloaded = cartpole.CLIPReward(model, tokenizer, ("pole vertically upright on top of the cart",),
                                   ("pole and cart",), alpha=0.5)
    frames = sweep_frames(reloaded.image_size)
    np.testing.assert_array_equal(reloaded(frames), tiny_reward(alpha=0.5)(frames))


def test_wrong_checkpoint_for_the_architecture_is_one_sentence(tiny_clip, tmp_path, capsys):
    name, _, _ = tiny_clip
    bad = tmp_path / "other.pt"
    torch.save({"not": torch.zeros(1)}, bad)
    with pytest.raises(SystemExit) as exit_info:
        cartpole.load_clip(name, str(bad), "cpu")
    message = str(exit_info.value)
    assert message.startswith("error: --clip-pretrained") and "\n" not in message


def test_same_goal_and_baseline_embedding_with_alpha_is_refused(tiny_reward):
    with pytest.raises(SystemExit, match="--alpha 0"):
        tiny_reward(goal=("pole and cart",), baseline=("pole and cart",), alpha=0.5)


def test_precision_rows_and_choice(tiny_reward):
    reward_model = tiny_reward()
    frames = sweep_frames(reward_model.image_size, n=8)
    rows = cartpole.measure_precisions(reward_model, frames, candidates=("bf16",))
    assert [r["precision"] for r in rows] == ["fp32", "bf16"]
    bf16 = rows[1]
    assert bf16["faithful"] == (bf16["max_error"] <= 0.05 * bf16["spread"])
    assert bf16["max_error"] > 0  # bf16 really ran in reduced precision
    assert reward_model.precision == "fp32"  # measured on a copy: the model itself is untouched
    rows = [dict(precision="fp32", seconds_per_frame=1.0, faithful=True),
            dict(precision="bf16", seconds_per_frame=0.2, faithful=False),
            dict(precision="fp16", seconds_per_frame=0.5, faithful=True)]
    assert cartpole.fastest_faithful(rows) == "fp16"
    rows[2]["faithful"] = False
    assert cartpole.fastest_faithful(rows) == "fp32"


def test_cast_changes_the_encoder_dtype_not_the_text_embeddings(tiny_reward):
    reward_model = tiny_reward()
    goal = reward_model.goal.clone()
    reward_model.cast("bf16")
    assert next(reward_model.model.visual.parameters()).dtype == torch.bfloat16
    assert reward_model.goal.dtype == torch.float32 and torch.equal(reward_model.goal, goal)
    assert reward_model(sweep_frames(reward_model.image_size, n=2)).dtype == np.float32
