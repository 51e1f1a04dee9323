"""Shared fixtures: tiny open_clip models with random weights, and stand-in encoders that see the goal.

Nothing here touches the network: the tiny architecture is registered from a config written by the
test session, and its checkpoint is one the session saves itself.
"""

import importlib.util
import json
import os
import shlex
import signal
import sys

# Before huggingface_hub is imported (it reads this once): a download attempt fails at once, not
# after a minute of retries.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
# One thread per process, here and in the scripts the tests start (inherited): the tests' networks are
# small, and on a 2-core machine two processes of two spinning threads each run several times slower.
os.environ["OMP_NUM_THREADS"] = "1"

import numpy as np  # noqa: E402
import open_clip  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# The tests' networks are small: one thread runs the learning tests 1.5-1.8x faster than two.
torch.set_num_threads(1)

import dqn_clip_cartpole as cartpole  # noqa: E402
import sac_clip_humanoid as humanoid  # noqa: E402  (sets MuJoCo's headless OpenGL, EGL, unless MUJOCO_GL is set)
import sac_clip_mountaincar as mountaincar  # noqa: E402


def load_benchmark(name):
    """A module of benchmarks/ (not a package: loaded from its file)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def report_args_printed(output: str):
    """The flags (benchmarks/reward_report.py's Args) of the report command a script printed on its landscape line."""
    import tyro

    line = next(line for line in output.splitlines() if line.startswith("reward landscape:"))
    words = shlex.split(line[line.index("python benchmarks/reward_report.py"):])
    return tyro.cli(load_benchmark("reward_report").Args, args=words[2:])


def headless_gl_works() -> bool:
    try:
        humanoid.require_gl()
        return True
    except SystemExit:
        return False


needs_gl = pytest.mark.skipif(not headless_gl_works(), reason="MuJoCo cannot render headless here (EGL or OSMesa)")

TINY_CLIP = "tiny-test-clip"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run the tests marked slow (minutes each)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a learning test of minutes; runs with --runslow")
    config.addinivalue_line("markers", "long(seconds): a test of half a minute or more; started first (see below)")


def pytest_collection_modifyitems(config, items):
    # The longest tests go first, longest first, so that with -n auto --dist worksteal they run beside the
    # short ones instead of alone at the end (the smoke grid alone takes ~3 minutes).
    items.sort(key=lambda item: -item.get_closest_marker("long").args[0] if item.get_closest_marker("long") else 0)
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def signal_handlers_restored():
    """A run that crashes inside its loop (tests/test_checkpoints.py makes one) leaves its SIGTERM and Ctrl-C handlers
    installed; each test starts with the handlers the one before it found, so that the next run in this worker
    gives back the defaults."""
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """(architecture name, checkpoint path, model) of a registered tiny CLIP with random weights."""
    folder = tmp_path_factory.mktemp("tiny_clip")
    (folder / f"{TINY_CLIP}.json").write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(folder / f"{TINY_CLIP}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_CLIP).eval().requires_grad_(False)
    checkpoint = folder / "tiny_clip.pt"
    torch.save(model.state_dict(), checkpoint)
    return TINY_CLIP, str(checkpoint), model


@pytest.fixture(scope="session")
def tiny_reward(tiny_clip):
    """A factory of CLIPReward on the tiny model."""
    name, _, model = tiny_clip
    tokenizer = open_clip.get_tokenizer(name)

    def make(goal=("pole vertically upright on top of the cart",), baseline=("pole and cart",), alpha=0.0,
             chunk_size=256, precision="fp32"):
        return cartpole.CLIPReward(model, tokenizer, goal, baseline, alpha, chunk_size=chunk_size, precision=precision)

    return make


class StandInEncoder(nn.Module):
    """A stand-in for CLIP that reads one quantity from the pixels: subclasses give `angle(pixels)`.

    encode_image: the unit vector (cos φ, sin φ, 0, 0) with φ = `angle(pixels)` in [0, π].
    encode_text: a sentence containing `goal_word` is (1, 0, 0, 0); any other sentence is (0, 0, 1, 0).
    So with alpha = 0 the reward is cos φ: 1 at the goal, falling to -1 as φ grows to π.
    """

    goal_word = ""

    def __init__(self, size=(96, 96)):
        super().__init__()
        self.preprocess_cfg = {"size": size, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}

    def tokenizer(self, prompts):
        return torch.tensor([[0 if self.goal_word in p else 1] for p in prompts])

    def encode_text(self, tokens):
        out = torch.zeros(len(tokens), 4)
        out[tokens[:, 0] == 0, 0] = 1.0
        out[tokens[:, 0] != 0, 2] = 1.0
        return out

    @staticmethod
    def centroid(mask):
        """Mean (x, y) pixel of a (N, H, W) boolean mask, per frame."""
        mask = mask.float()
        ys, xs = torch.meshgrid(torch.arange(mask.shape[1]), torch.arange(mask.shape[2]), indexing="ij")
        count = mask.sum((1, 2)).clamp_min(1)
        return (mask * xs).sum((1, 2)) / count, (mask * ys).sum((1, 2)) / count

    def encode_image(self, x):
        pixels = (x.float() * 0.5 + 0.5) * 255  # undo the normalisation: (N, 3, H, W) in 0..255
        phi = self.angle(pixels)
        return torch.stack([torch.cos(phi), torch.sin(phi), 0 * phi, 0 * phi], dim=1).to(x.dtype)


class PoleTiltEncoder(StandInEncoder):
    """Sees CartPole's pole: φ = min(4 |tilt|, π), so the reward falls steeply as the pole leaves the vertical.

    The pole's and the axle's pixels are found by colour, and their offset converted back to the
    scene's unstretched coordinates. The reward is 1 upright, 0 at 22.5° of tilt, -1 from 45° on.
    """

    goal_word = "upright"
    POLE, AXLE = (202, 152, 101), (129, 132, 203)

    @staticmethod
    def expected_reward(tilt):
        return np.cos(np.minimum(4 * np.abs(tilt), np.pi))

    def angle(self, pixels):
        height, width = pixels.shape[-2:]
        colour_mask = lambda c: (pixels - torch.tensor(c).view(1, 3, 1, 1)).abs().sum(1) < 30  # noqa: E731
        pole_x, pole_y = self.centroid(colour_mask(self.POLE))
        axle_x, axle_y = self.centroid(colour_mask(self.AXLE))
        # The frame stretches the 600x400 scene to (width, height): undo it before taking the angle.
        dx, dy_up = (pole_x - axle_x) * 600 / width, (axle_y - pole_y) * 400 / height
        return (4 * torch.atan2(dx, dy_up).abs()).clamp(max=np.pi)


def is_car_red(red, green, blue):
    """Pixels of MountainCar's red car (numpy arrays or tensors of the three channels, 0..255)."""
    return (red > 150) & (green < 60) & (blue < 70)


class CarPositionEncoder(StandInEncoder):
    """Sees MountainCar's red car: φ = π (0.45 - x) / span clipped to [0, π], x read from the car's pixels.

    The reward cos φ is 1 at the flag (x ≥ 0.45) and falls to -1 at x = 0.45 - span and beyond;
    `span` = 1.65 makes it fall all the way to the left end of the track (x = -1.2).
    """

    goal_word = "peak"

    def __init__(self, size=(96, 96), span=1.65):
        super().__init__(size)
        self.span = span

    def expected_reward(self, x):
        return np.cos(np.pi * np.clip((0.45 - np.asarray(x)) / self.span, 0, 1))

    def angle(self, pixels):
        car_x, _ = self.centroid(is_car_red(pixels[:, 0], pixels[:, 1], pixels[:, 2]))
        position = -1.2 + (car_x + 0.5) / pixels.shape[-1] * 1.8  # the frame spans x in [-1.2, 0.6]
        return (np.pi * (0.45 - position) / self.span).clamp(0, np.pi)


def empty_humanoid_scene(size):
    """A frame of the humanoid's scene at `size` (height, width) without the robot (moved 100 m to its side).

    The paper's camera is fixed in the world, so this is the background of every frame of that size. The scene is
    --fast-render's: without shadows, so that a robot's shadow on the floor does not read as the robot.
    """
    env = humanoid.CLIPHumanoidEnv(frame_size=size, fast_render=True)
    env.reset(seed=0)
    qpos = env.init_qpos.copy()
    qpos[1] = 100.0
    env.set_state(qpos, np.zeros(env.model.nv))
    frame = env.render().copy()
    env.close()
    return frame


class RobotWidthEncoder(StandInEncoder):
    """Sees how wide the humanoid is: φ = π (goal - width) / span clipped to [0, π], `width` the span of the
    robot's pixels from its leftmost to its rightmost column as a fraction of the frame's width.

    The robot's pixels are those that differ from the empty scene (the paper's camera is fixed; frames of the
    --fast-render scene, without shadows). Across the
    camera's view the frame spans ~2.9 m at the robot: standing at the start of an episode it is ~0.28 of
    the frame wide (arms bent at its sides), ~0.22 with the arms hanging, ~0.37 with them stretched out to
    the sides. With the defaults the reward cos φ is 1 from 0.4 of the frame on, about 0 at the start of an
    episode and -1 at 0.15 and narrower.
    """

    goal_word = "stretched"

    def __init__(self, size=(64, 64), goal=0.4, span=0.25):
        super().__init__(size)
        self.goal, self.span = goal, span
        self.register_buffer("background", torch.from_numpy(empty_humanoid_scene(size)).permute(2, 0, 1).float())

    def width(self, pixels):
        robot = (pixels - self.background).abs().sum(1) > 30  # (N, H, W); colour channels 0..255, summed
        columns = torch.arange(robot.shape[2], dtype=torch.float32).view(1, 1, -1)
        left = torch.where(robot, columns, float(robot.shape[2])).amin((1, 2))
        right = torch.where(robot, columns, -1.0).amax((1, 2))
        return (right - left + 1).clamp_min(0) / robot.shape[2]

    def angle(self, pixels):
        return (np.pi * (self.goal - self.width(pixels)) / self.span).clamp(0, np.pi)


@pytest.fixture
def pole_tilt_reward():
    encoder = PoleTiltEncoder()
    return cartpole.CLIPReward(encoder, encoder.tokenizer, ("pole vertically upright on top of the cart",),
                               ("pole and cart",), alpha=0.0)


def capture_buffers(module, monkeypatch) -> list:
    """The replay buffers that `module.main` will create (main returns only figures): tests look inside."""
    buffers, init = [], module.ReplayBuffer.__init__

    def capturing_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        buffers.append(self)

    monkeypatch.setattr(module.ReplayBuffer, "__init__", capturing_init)
    return buffers


def read_scalars(run_dir):
    """{tag: [(step, value), ...]} of a TensorBoard run folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


@pytest.fixture
def rng():
    return np.random.default_rng(0)
