"""Issue 11, kind 2: ``convert`` leaves the user's model exactly as it was."""

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import sresnet

from _sresnet_nets import make

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
              "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
              "_load_state_dict_post_hooks")


def snapshot(model: nn.Module) -> dict:
    """Everything convert could change: flags, tensors (bits, dtype, device, identity), grads, hooks."""
    snap = {}
    for name, mod in model.named_modules():
        snap[f"{name}:module"] = (type(mod), mod.training, id(mod))
        for attr in HOOK_DICTS:
            hooks = getattr(mod, attr, {})
            snap[f"{name}:{attr}"] = [(k, id(v)) for k, v in hooks.items()]
    for name, p in model.named_parameters(remove_duplicate=False):
        grad = None if p.grad is None else p.grad.clone()
        snap[f"{name}:param"] = (id(p), p.detach().clone(), p.dtype, p.device, p.requires_grad, grad)
    for name, b in model.named_buffers(remove_duplicate=False):
        snap[f"{name}:buffer"] = (id(b), b.clone(), b.dtype, b.device)
    return snap


def assert_same(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for key, old in before.items():
        new = after[key]
        if key.endswith(":param") or key.endswith(":buffer"):
            assert old[0] == new[0], f"{key}: tensor replaced"
            # bit for bit: compare the raw bytes (NaN-safe, -0.0 vs 0.0 distinguished)
            assert old[1].reshape(-1).view(torch.uint8).equal(new[1].reshape(-1).view(torch.uint8)), f"{key}: values changed"
            assert old[2:4] == new[2:4], f"{key}: dtype/device changed"
            if key.endswith(":param"):
                assert old[4] == new[4], f"{key}: requires_grad changed"
                assert (old[5] is None) == (new[5] is None), f"{key}: grad appeared/disappeared"
                if old[5] is not None:
                    assert torch.equal(old[5], new[5]), f"{key}: grad changed"
        else:
            assert old == new, f"{key}: {old} -> {new}"


def _finetuning(model: nn.Module) -> nn.Module:
    """train() with every BatchNorm frozen in eval(), the usual fine-tuning setup."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    return model


def _mixed(model: nn.Module) -> nn.Module:
    """eval() root, some submodules in train(), some frozen parameters, some gradients set."""
    model.eval()
    mods = list(model.modules())
    for m in mods[1::3]:
        m.train()
    for i, p in enumerate(model.parameters()):
        if i % 2:
            p.requires_grad_(False)
        elif i % 3 == 0:
            p.grad = torch.full_like(p, 0.25)
    return model


def _hooked(model: nn.Module) -> nn.Module:
    """Hooks convert must leave registered (backward and state-dict hooks: no effect on outputs)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_full_backward_hook(lambda mod, gin, gout: None)
            m._register_state_dict_hook(lambda mod, sd, prefix, local: None)
    return model


MODELS = [
    ("tiny-finetuning", lambda: _finetuning(make("tiny_B_module"))),
    ("cifarA-finetuning", lambda: _finetuning(make("cifarA"))),
    ("tv_basic-mixed", lambda: _mixed(make("tv_basic"))),
    ("tiny-mixed-hooked", lambda: _hooked(_mixed(make("tiny_A_inplace")))),
    ("cifarB-train", lambda: make("cifarB").train()),
]


@pytest.mark.parametrize("build", [m for _, m in MODELS], ids=[n for n, _ in MODELS])
def test_model_unchanged_by_convert(build):
    model = build()
    before = snapshot(model)
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    sresnet.convert(model, x, calib_timesteps=4, calib_subset=4)
    assert_same(before, snapshot(model))
    snn = sresnet.convert(model, x, compensation=None)
    assert_same(before, snapshot(model))
    # the conversion used the eval statistics whatever the flags: it equals the eval-mode ANN
    model.eval()
    with torch.no_grad():
        ref = model(x)
    assert float((snn.analog(x) - ref).abs().max() / ref.abs().max()) < 1e-5


def test_frozen_batchnorm_stays_frozen_for_the_next_training_step():
    model = _finetuning(make("tiny_B_module"))
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    sresnet.convert(model, x, compensation=None)
    stats = [m.running_mean.clone() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    model(x).sum().backward()
    after = [m.running_mean for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(stats, after))


def test_float64_model_on_its_device_stays_float64():
    model = make("tiny_A_functional").double()
    before = snapshot(model)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    snn = sresnet.convert(model, x, compensation=None)
    assert_same(before, snapshot(model))
    with torch.no_grad():
        ref = model(x.double()).float()
    assert float((snn.analog(x) - ref).abs().max() / ref.abs().max()) < 1e-5


class _Normed(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)
        if kind == "parametrize-weight_norm":
            nn.utils.parametrizations.weight_norm(self.conv)
        elif kind == "parametrize-spectral_norm":
            nn.utils.parametrizations.spectral_norm(self.fc)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                nn.utils.weight_norm(self.conv)
                nn.utils.spectral_norm(self.fc)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.conv(x)), 1).flatten(1))


@pytest.mark.parametrize("kind", ["parametrize-weight_norm", "parametrize-spectral_norm", "hook-based"])
def test_weight_parametrizations_are_honoured_and_kept(kind):
    torch.manual_seed(3)
    model = _Normed(kind).eval()
    x = torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = model(x)
    before = snapshot(model)
    snn = sresnet.convert(model, x, compensation=None)
    assert_same(before, snapshot(model))
    with torch.no_grad():
        assert torch.equal(model(x), ref)
    assert float((snn.analog(x) - ref).abs().max() / ref.abs().max()) < 1e-5


def test_forward_hook_is_refused_and_left_in_place():
    model = make("tiny_B_module")
    handle = model.b1.conv1.register_forward_hook(lambda m, i, o: o * 2)
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"module 'b1.conv1' \(Conv2d\) has a forward hook.*handle.remove"):
        sresnet.convert(model, torch.randn(4, 3, 8, 8), compensation=None)
    assert_same(before, snapshot(model))
    handle.remove()
    model.b2.register_forward_pre_hook(lambda m, i: None)
    with pytest.raises(ValueError, match=r"module 'b2' \(TinyBlock\) has a forward pre-hook"):
        sresnet.convert(model, torch.randn(4, 3, 8, 8), compensation=None)
