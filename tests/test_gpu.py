"""GPU paths: bf16 autocast, the teacher on CUDA, a whole round with use_gpu. Skipped without CUDA
(see conftest); run them on a GPU machine with ``pytest -m gpu``."""

from __future__ import annotations

import pytest
import torch

from s4al_ray.model import build_model
from s4al_ray.teacher import predict_probs

pytestmark = pytest.mark.gpu


def test_bf16_autocast_training_step():
    model = build_model(9, "mobilenet_v2", 16, 16, head_channels=64).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(4, 3, 96, 128, device="cuda")
    y = torch.randint(0, 9, (4, 96, 128), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x, with_embedding=True)
        loss = torch.nn.functional.cross_entropy(out["logits"].float(), y)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_teacher_on_gpu_matches_cpu():
    model = build_model(5, "mobilenet_v2", 16, 16, head_channels=64).eval()
    x = torch.rand(2, 3, 64, 80)
    cpu = predict_probs(model, x, [0.5, 1.0], flip=True)
    gpu = predict_probs(model.cuda(), x.cuda(), [0.5, 1.0], flip=True).cpu()
    assert torch.allclose(cpu, gpu, atol=1e-3)


def test_round_with_gpu_workers(ray_session, smoke_data_root, tmp_path):
    from s4al_ray.config import load_config
    from s4al_ray.experiment import Experiment

    if ray_session.cluster_resources().get("GPU", 0) < 1:
        pytest.skip("the Ray session sees no GPU")
    cfg = load_config(
        "configs/smoke.yaml",
        [
            f"storage={tmp_path}",
            f"data.root={smoke_data_root}",
            "name=gpu",
            "train.use_gpu=true",
            "train.sync_bn=true",
        ],
    )
    records = Experiment(cfg, log=print).run()
    assert records[1]["pool/labeled_frac"] > records[0]["pool/labeled_frac"]


@pytest.mark.parametrize(("channels", "groups", "dilation"), [(16, 16, 2), (16, 1, 6)])
def test_atrous_conv_on_gpu_equals_the_dilated_conv(channels, groups, dilation):
    # On CUDA: the direct call with the padding-only taps skipped, against the plain dilated conv,
    # in float64 (no TF32); then under bf16 autocast, which must still apply to the rewrite.
    from torch.nn.functional import conv2d

    from s4al_ray.model.atrous import AtrousConv2d

    torch.manual_seed(0)
    conv = AtrousConv2d(channels, channels, 3, padding=dilation, dilation=dilation, groups=groups)
    conv = conv.cuda().double()
    x = torch.randn(4, channels, 6, 8, device="cuda", dtype=torch.double, requires_grad=True)
    grad_out = torch.randn(4, channels, 6, 8, device="cuda", dtype=torch.double)
    params = [x, conv.weight, conv.bias]
    mine = conv(x)
    plain = conv2d(x, conv.weight, conv.bias, 1, dilation, dilation, groups)
    torch.testing.assert_close(mine, plain, rtol=0, atol=1e-12)
    for a, b in zip(
        torch.autograd.grad((mine * grad_out).sum(), params),
        torch.autograd.grad((plain * grad_out).sum(), params),
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    conv, x = conv.float(), x.detach().float()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        mine = conv(x)
        plain = conv2d(x, conv.weight, conv.bias, 1, dilation, dilation, groups)
    assert mine.dtype == plain.dtype == torch.bfloat16
    torch.testing.assert_close(mine.float(), plain.float(), rtol=2e-2, atol=2e-2)


def test_reco_negative_logits_backward_on_gpu_matches_cpu():
    from s4al_ray.losses.reco import negative_logits

    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(3, 5, 8, generator=generator, dtype=torch.double)
    keys = torch.randn(40, 8, generator=generator, dtype=torch.double)
    neg = torch.randint(0, 40, (3, 5, 7), generator=generator)
    grads = []
    for device in ("cpu", "cuda"):
        q = queries.to(device).clone().requires_grad_()
        negative_logits(q, keys.to(device), neg.to(device)).square().sum().backward()
        grads.append(q.grad.cpu())
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-12)
