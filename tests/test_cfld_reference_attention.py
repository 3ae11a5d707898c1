"""CFLD's reference attention (issue 24): every self-attention layer also reads the source pyramid's
features of its own resolution, through the shared source-attention processor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from gen_inputs import H, W
from gen_inputs import images as _images
from gen_inputs import pose as _pose

from posereid.models import load_generator
from posereid.models.cfld import CFLDPipeline, HybridGranularityProcessor
from posereid.models.texture_attention import SourceAttnProcessor, reference_layers


def _pipe(**kw: object) -> CFLDPipeline:
    torch.manual_seed(0)
    return CFLDPipeline.from_preset("tiny", reference_attention=True, **kw).eval()


def test_each_self_attention_layer_gets_the_projected_source_level_of_its_resolution_as_keys_and_values() -> (
    None
):
    pipe = _pipe()
    net = pipe.model
    names = [name for name, _, _ in net.ref_layers]
    # the self-attending attn1 layers only: the full-resolution level only cross-attends (attn1 reads the prompt)
    assert names == reference_layers(net.unet) and len(names) == len(net.reference_proj) > 0
    assert not any(
        n.startswith(("down_blocks.0.", f"up_blocks.{len(net.unet.up_blocks) - 1}.")) for n in names
    )
    src = _images(2, 0)
    with torch.no_grad():
        maps = net.source(src)
    # what each layer should get: the pyramid level of its own resolution, projected by its own projection
    want = {}
    for (name, level, size), proj in zip(net.ref_layers, net.reference_proj):
        assert tuple(maps[level].shape[-2:]) == size  # tiny: the pyramid has every self-attention resolution
        with torch.no_grad():
            want[name] = proj(maps[level].flatten(2).transpose(1, 2))
    seen: dict[str, list[tuple[int, torch.Tensor, torch.Tensor]]] = {n: [] for n in names}
    hooks = []
    for name in names:
        attn = net.unet.get_submodule(name.removesuffix(".processor"))
        assert (
            isinstance(attn.processor, HybridGranularityProcessor)
            and attn.processor.reference_index is not None
        )

        def record(_m, args, _o, name=name, attn=attn) -> None:  # noqa: ANN001
            seen[name].append((attn.heads, args[0], _o))

        hooks.append(attn.to_k.register_forward_hook(record))
        hooks.append(attn.to_v.register_forward_hook(record))
    try:
        pipe.generate(src, _pose(2.0, 2), steps=1, seeds=[0, 1], guidance=(1.0, 1.0))
    finally:
        for h in hooks:
            h.remove()
    for name in names:
        assert len(seen[name]) == 2, name  # keys and values, one step, one branch
        ref = want[name]
        for _, inputs, _ in seen[name]:
            # the key/value input: the layer's own tokens, then the reference tokens of its resolution
            n_own = inputs.shape[1] - ref.shape[1]
            assert n_own == ref.shape[1], (name, inputs.shape, ref.shape)  # same number of positions
            assert torch.allclose(inputs[:, n_own:], ref, atol=1e-5), name
    sizes = {tuple(s) for _, _, s in net.ref_layers}
    assert sizes == {(H // 2, W // 2), (H // 4, W // 4)}


def test_the_source_reaches_the_image_through_the_reference_path_alone() -> None:
    """With every cross-attention blind to the prompt (zero keys and values) and no HGA, two sources give
    two images only through reference attention: the same model without it gives one image for both."""
    outs = {}
    for reference in (True, False):
        torch.manual_seed(0)
        pipe = CFLDPipeline.from_preset("tiny", use_hga=False, reference_attention=reference).eval()
        with torch.no_grad():
            for module in pipe.model.unet.modules():
                if getattr(module, "is_cross_attention", False):
                    module.to_k.weight.zero_()
                    module.to_v.weight.zero_()
        a = pipe.generate(_images(1, 3), _pose(2.0), steps=2, seeds=[5], guidance=(1.0, 1.0))
        b = pipe.generate(_images(1, 4), _pose(2.0), steps=2, seeds=[5], guidance=(1.0, 1.0))
        outs[reference] = (a - b).abs().max().item()
    assert outs[False] < 1e-6 < 1e-3 < outs[True], outs


def test_zeroing_the_reference_projection_changes_the_output_and_dropping_the_appearance_ignores_it() -> None:
    pipe = _pipe()
    net = pipe.model
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 3, H, W, generator=g), torch.tensor([50, 600])
    pose = net.encode_pose(pipe.pose_maps(_pose(0.0, 2)))
    with torch.no_grad():
        app = net.encode_source(_images(2, 1))
        n_bias = len(net.hga_proj)
        assert len(app) == 1 + n_bias + len(net.reference_proj)
        full = net(x, t, pose, app[0], app[1:])
        apart = net(x, t, pose, app[0], app[1 : 1 + n_bias], reference_tokens=app[1 + n_bias :])
        assert torch.equal(full, apart)  # the tail, or the reference tokens given apart
        for proj in net.reference_proj:
            proj[1].weight.zero_()
            proj[1].bias.zero_()
        zeroed = net.encode_source(_images(2, 1))
        assert not torch.allclose(net(x, t, pose, zeroed[0], zeroed[1:]), full, atol=1e-4)
        # a dropped appearance: zero reference tokens, whatever the source
        other = net.encode_source(_images(2, 9))
        null, null_other = net.null_source(app), net.null_source(other)
        assert all(torch.equal(r, torch.zeros_like(r)) for r in null[1 + n_bias :])
        assert torch.equal(net(x, t, pose, null[0], null[1:]), net(x, t, pose, null_other[0], null_other[1:]))
        with pytest.raises(ValueError, match="reference token tensors"):
            net(x, t, pose, app[0], app[1 : 1 + n_bias])


def test_default_off_keeps_the_processors_and_old_checkpoints_load_unchanged(tmp_path: Path) -> None:
    torch.manual_seed(0)
    plain = CFLDPipeline.from_preset("tiny").eval()
    assert plain.model.config.reference_attention is False and not plain.model.reference_proj
    assert not any("reference_proj" in k for k in plain.state_dict())
    procs = plain.model.unet.attn_processors
    assert all(type(p) is HybridGranularityProcessor and p.reference_index is None for p in procs.values())
    no_hga = CFLDPipeline.from_preset("tiny", use_hga=False).model.unet.attn_processors
    assert all(type(p) is AttnProcessor2_0 for p in no_hga.values())  # diffusers' own, as before
    # a checkpoint written before the field existed loads as reference_attention=False, the same model
    plain.save_pretrained(tmp_path / "old")
    cfg_path = tmp_path / "old" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["reference_attention"]
    cfg_path.write_text(json.dumps(cfg))
    old = load_generator(tmp_path / "old")
    assert old.model.config.reference_attention is False
    src, kt = _images(2, 5), _pose(1.0, 2)
    assert torch.equal(
        old.generate(src, kt, steps=2, seeds=[1, 2]), plain.generate(src, kt, steps=2, seeds=[1, 2])
    )


def test_reference_attention_trains_saves_and_loads_bit_identically(tmp_path: Path) -> None:
    pipe = _pipe()
    loss = pipe.train().training_loss(_images(2, 1), _images(2, 2), _pose(0.0, 2), _pose(2.0, 2))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pipe.model.reference_proj.parameters())
    pipe.eval().save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["reference_attention"] is True
    loaded = load_generator(tmp_path)
    assert type(loaded) is CFLDPipeline and loaded.model.config.reference_attention is True
    assert isinstance(loaded.model.unet.attn_processors[loaded.model.ref_layers[0][0]], SourceAttnProcessor)
    src, kt = _images(2, 5), _pose(1.0, 2)
    assert torch.equal(
        loaded.generate(src, kt, steps=2, seeds=[1, 2]), pipe.generate(src, kt, steps=2, seeds=[1, 2])
    )
