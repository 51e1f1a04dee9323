"""The CLIP reward against the paper's formula, batching, checkpoints and precision choice."""

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from conftest import cartpole, needs_gl


def sweep_frames(size, n=12):
    frames, _ = cartpole.landscape_frames(size, np.linspace(-1.5, 1.5, n))
    return frames


def direct_reward(model, tokenizer, frames, goal, baseline, alpha, mean, std, size=None):
    """R = 1 - ½‖M(s - g)‖² written out from the paper, in float64 with an explicit matrix M.

    `size`: first resize the frames to (height, width), bicubic, aspect ratio not kept (as the authors).
    """
    with torch.no_grad():
        x = torch.tensor(frames).permute(0, 3, 1, 2).float() / 255
        if size is not None:
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
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
    rewards = reward_model(frames)
    assert isinstance(rewards, torch.Tensor) and rewards.dtype == torch.float32 and rewards.device.type == "cpu"
    np.testing.assert_allclose(rewards, expected, atol=2e-6)


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


def test_forward_passes_hold_at_most_chunk_size_frames(tiny_reward, monkeypatch):
    """A large queued batch goes through CLIP in chunks (GPU memory), with the same rewards as one pass."""
    frames = sweep_frames(tiny_reward().image_size, n=10)
    whole = tiny_reward(alpha=0.5, chunk_size=256)(frames)
    chunked_model = tiny_reward(alpha=0.5, chunk_size=3)
    passes = []
    encode_image = chunked_model.model.encode_image
    monkeypatch.setattr(chunked_model.model, "encode_image", lambda x: passes.append(len(x)) or encode_image(x))
    chunked = chunked_model(frames)
    assert passes == [3, 3, 3, 1]
    single = torch.cat([tiny_reward(alpha=0.5)(frames[i: i + 1]) for i in range(len(frames))])
    np.testing.assert_allclose(chunked, whole, atol=1e-6)
    np.testing.assert_allclose(single, whole, atol=1e-6)


@pytest.mark.parametrize("frame_size", [(128, 128), (96, 160)])
def test_frames_of_another_size_are_resized(tiny_clip, tiny_reward, frame_size):
    """Frames not at the model's size are resized (bicubic, height and width each to the model's)."""
    name, _, model = tiny_clip
    reward_model = tiny_reward(alpha=0.5)
    frames = sweep_frames(frame_size, n=6)
    cfg = open_clip.get_model_preprocess_cfg(model)
    expected = direct_reward(model, open_clip.get_tokenizer(name), frames, ("pole vertically upright on top of the cart",),
                             ("pole and cart",), 0.5, cfg["mean"], cfg["std"], size=reward_model.image_size)
    # These rewards spread over ~1e-3 with random weights: a tolerance of 2e-6 tells resize methods apart.
    assert np.ptp(expected) > 100 * 2e-6
    np.testing.assert_allclose(reward_model(frames), expected, atol=2e-6)


def test_checkpoint_file_gives_the_same_rewards(tiny_clip, tiny_reward):
    name, checkpoint, _ = tiny_clip
    args = cartpole.Args(clip_model=name, clip_pretrained=checkpoint, alpha=0.5, clip_precision="fp32")
    reloaded = cartpole.load_clip_reward(args, torch.device("cpu"))
    frames = sweep_frames(reloaded.image_size)
    np.testing.assert_array_equal(reloaded(frames), tiny_reward(alpha=0.5)(frames))


def test_wrong_checkpoint_for_the_architecture_is_one_sentence(tiny_clip, tmp_path, capsys):
    name, _, _ = tiny_clip
    bad = tmp_path / "other.pt"
    torch.save({"not": torch.zeros(1)}, bad)
    with pytest.raises(SystemExit) as exit_info:
        cartpole.load_clip_reward(cartpole.Args(clip_model=name, clip_pretrained=str(bad)), torch.device("cpu"))
    message = str(exit_info.value)
    assert message.startswith("error: --clip-pretrained") and "\n" not in message


def test_the_weights_probe_asks_the_weights_host_once_with_a_short_timeout(monkeypatch):
    import socket

    asked = []

    def refuse(address, timeout):
        asked.append((address, timeout))
        raise OSError("no route to host")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert not cartpole.weights_host_reachable(open_clip.get_pretrained_cfg("ViT-B-32", "laion2b_s34b_b79k"))
    assert not cartpole.weights_host_reachable({"url": "https://weights.example.org/clip/RN50.pt"})
    assert asked == [(("huggingface.co", 443), 3.0), (("weights.example.org", 443), 3.0)]
    monkeypatch.setattr(socket, "create_connection", lambda address, timeout: socket.socket())  # accepted
    assert cartpole.weights_host_reachable({"url": "https://weights.example.org/clip/RN50.pt"})


def test_offline_the_loader_looks_only_in_the_cache_and_stops_without_the_hubs_retries(monkeypatch, tmp_path):
    """With the hub unreachable the client is switched to offline mode before it is asked for the weights: a cached
    file would load, a missing one fails at once. Without it the client retries, sleeping between its attempts."""
    import time

    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # as on a user's machine
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # nothing cached
    monkeypatch.setattr(cartpole, "weights_host_reachable", lambda cfg, timeout=3.0: False)
    monkeypatch.setattr(time, "sleep", lambda seconds: pytest.fail(f"the hub client retried (slept {seconds} s)"))
    args = cartpole.Args(clip_model="ViT-B-32", clip_pretrained="laion2b_s34b_b79k")
    with pytest.raises(SystemExit, match="could not download the 'laion2b_s34b_b79k' weights of ViT-B-32"):
        cartpole.load_clip_reward(args, torch.device("cpu"))
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True


def test_same_goal_and_baseline_embedding_with_alpha_is_refused(tiny_reward):
    with pytest.raises(SystemExit, match="--alpha 0"):
        tiny_reward(goal=("pole and cart",), baseline=("pole and cart",), alpha=0.5)


def test_precision_rule_is_fixed(capsys):
    """`auto` depends only on the device (fp16 autocast on a GPU, fp32 on a CPU), never on a timing."""
    assert cartpole.choose_precision("auto", torch.device("cuda")) == "fp16"
    assert cartpole.choose_precision("auto", "cpu") == "fp32"
    assert cartpole.choose_precision("bf16", "cpu") == "bf16" and cartpole.choose_precision("fp32", "cuda") == "fp32"
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "CLIP image encoder runs in fp16 (autocast) (--clip-precision auto on cuda)"


def test_chunk_size_rule_is_fixed(capsys):
    """`--clip-chunk-size 0` depends only on the device (256 on a GPU, 32 on a CPU); a size given is kept."""
    assert cartpole.choose_chunk_size(0, torch.device("cuda")) == 256 and cartpole.choose_chunk_size(0, "cpu") == 32
    assert cartpole.choose_chunk_size(100, "cpu") == 100 and cartpole.choose_chunk_size(8, "cuda") == 8
    assert capsys.readouterr().out.splitlines() == ["CLIP scores 256 frames per pass (--clip-chunk-size 0 on cuda)",
                                                    "CLIP scores 32 frames per pass (--clip-chunk-size 0 on cpu)"]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_autocasts_the_encoder_only(tiny_reward, precision):
    """The CUDA default's arithmetic (autocast), run on the CPU: the encoder's matrix products in reduced
    precision, the weights and the text embeddings untouched, float32 rewards out."""
    frames = sweep_frames(tiny_reward().image_size, n=8)
    reference = tiny_reward()(frames)
    reward_model = tiny_reward(precision=precision)
    goal, weights = reward_model.goal.clone(), next(reward_model.model.visual.parameters()).clone()
    rewards = reward_model(frames)
    assert rewards.dtype == torch.float32
    error = (rewards - reference).abs().max().item()
    assert 0 < error < 0.01  # it really ran in reduced precision, and stayed close (bf16: ~1e-3, fp16: ~1e-4)
    assert next(reward_model.model.visual.parameters()).dtype == torch.float32
    assert torch.equal(next(reward_model.model.visual.parameters()), weights) and torch.equal(reward_model.goal, goal)


@needs_gl
def test_frames_from_any_renderer(tiny_reward):
    """What a user's own env.render() returns is scored as its contiguous copy: gymnasium's MuJoCo renderer
    returns frames flipped in memory (negative strides, which torch cannot wrap); its pygame renderer's frames
    are 600x400 (resized); one frame, a batch and a list of frames all work."""
    import gymnasium as gym

    reward_model = tiny_reward()
    mujoco_env = gym.make("Humanoid-v5", render_mode="rgb_array", width=96, height=96)
    pygame_env = gym.make("CartPole-v1", render_mode="rgb_array")
    for env in (mujoco_env, pygame_env):
        env.reset(seed=0)
        frames = [env.render()]
        for k in range(2):  # frames far enough apart that the tiny model's rewards differ
            if env is mujoco_env:
                for _ in range(8):
                    env.step(np.ones(env.action_space.shape))
            else:  # the cart moved and the pole tilted (pushing would end the episode first)
                env.unwrapped.state = np.array([0.8 * (k + 1), 0.0, 0.1 * (k + 1), 0.0])
            frames.append(env.render())
        env.close()
        assert frames[0].dtype == np.uint8 and frames[0].flags.c_contiguous == (env is pygame_env)
        expected = reward_model(np.stack([np.ascontiguousarray(f) for f in frames])).numpy()
        assert np.ptp(expected) > 1e-4  # different frames: a frame scored in the wrong place would show
        np.testing.assert_allclose(reward_model(frames).numpy(), expected, atol=1e-6)  # a list
        np.testing.assert_allclose(reward_model(frames[1][None]).numpy(), expected[1:2], atol=1e-6)  # a view
        np.testing.assert_allclose(reward_model(frames[2]).numpy(), expected[2:], atol=1e-6)  # one frame
        if env is mujoco_env:
            assert frames[0].strides[0] < 0  # what made torch fail


def test_frames_that_are_not_uint8_rgb_are_refused_with_one_sentence(tiny_reward):
    reward_model = tiny_reward()
    with pytest.raises(ValueError, match=r"uint8 RGB frames \(N, H, W, 3\), got float32"):
        reward_model(np.zeros((2, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match=r"got uint8 \(2, 64, 64, 4\)"):
        reward_model(np.zeros((2, 64, 64, 4), np.uint8))


def test_frames_already_in_a_tensor_and_no_frames_at_all(tiny_reward):
    reward_model = tiny_reward()
    frames = sweep_frames(reward_model.image_size, n=3)
    expected = reward_model(frames)
    torch.testing.assert_close(reward_model(torch.from_numpy(frames)), expected)  # e.g. frames already on a GPU
    torch.testing.assert_close(reward_model(torch.from_numpy(frames[0])), expected[:1], atol=1e-6, rtol=0)
    assert reward_model([]).shape == (0,)
