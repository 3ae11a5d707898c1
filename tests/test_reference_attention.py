"""Reference attention (issue 24): every self-attention layer also reads the source's tokens of its own scale."""

from __future__ import annotations

from pathlib import Path

import torch
from gen_inputs import H, W
from gen_inputs import images as _images
from gen_inputs import pose as _pose

from posereid.models import load_generator
from posereid.models.pidm import PIDMPipeline
from posereid.models.texture_attention import SourceAttnProcessor, reference_layers


def _pipe(**kw) -> PIDMPipeline:
    torch.manual_seed(0)
    return PIDMPipeline.from_preset("tiny", reference_attention=True, **kw).eval()


class _Spy(SourceAttnProcessor):
    """Records, per self-attention call, how many tokens the layer has and how many reference tokens it got."""

    calls: list[tuple[int, int]] = []

    def __call__(self, attn, hidden_states, *args, reference_tokens=None, **kwargs):  # noqa: ANN001, ANN002, ANN003
        if self.reference_index is not None and reference_tokens is not None:
            ref = reference_tokens[self.reference_index]
            _Spy.calls.append((hidden_states.shape[1], ref.shape[1]))
        return super().__call__(attn, hidden_states, *args, reference_tokens=reference_tokens, **kwargs)


def test_each_self_attention_layer_receives_the_source_tokens_of_its_own_resolution() -> None:
    pipe = _pipe()
    unet = pipe.model.unet
    names = reference_layers(unet)
    assert names and len(names) == len(pipe.model.reference_proj)
    procs = unet.attn_processors
    unet.set_attn_processor(
        {
            n: _Spy(level=p.level, bias_index=p.bias_index, reference_index=p.reference_index)
            for n, p in procs.items()
        }
    )
    _Spy.calls.clear()
    pipe.generate(_images(2, 0), _pose(2.0, 2), _pose(0.0, 2), steps=1, seeds=[0, 1], guidance=(1.0, 1.0))
    assert len(_Spy.calls) == len(names)  # every self-attention layer, once (one step, one branch)
    assert all(layer == ref for layer, ref in _Spy.calls), _Spy.calls  # same positions: same resolution
    assert {layer for layer, _ in _Spy.calls} == {(H // 2) * (W // 2), (H // 4) * (W // 4)}


def test_the_source_reaches_the_image_through_the_reference_path_alone() -> None:
    """With every cross-attention blind to its tokens (zero keys and values), two sources give two images
    only through reference attention: a model without it gives the same image for both."""
    outs = {}
    for reference in (True, False):
        torch.manual_seed(0)
        pipe = PIDMPipeline.from_preset("tiny", reference_attention=reference).eval()
        with torch.no_grad():
            for name, module in pipe.model.unet.named_modules():
                if name.endswith("attn2"):
                    module.to_k.weight.zero_()
                    module.to_v.weight.zero_()
        a = pipe.generate(_images(1, 3), _pose(2.0), _pose(0.0), steps=2, seeds=[5], guidance=(1.0, 1.0))
        b = pipe.generate(_images(1, 4), _pose(2.0), _pose(0.0), steps=2, seeds=[5], guidance=(1.0, 1.0))
        outs[reference] = (a - b).abs().max().item()
    assert outs[False] < 1e-6 < 1e-3 < outs[True], outs


def test_reference_attention_trains_saves_and_loads_bit_identically(tmp_path: Path) -> None:
    pipe = _pipe()
    loss = pipe.train().training_loss(_images(2, 1), _images(2, 2), _pose(0.0, 2), _pose(2.0, 2))
    loss.backward()
    assert all(p.grad is not None for p in pipe.model.reference_proj.parameters())
    pipe.eval().save_pretrained(tmp_path)
    src, kt = _images(2, 5), _pose(1.0, 2)
    assert torch.equal(
        load_generator(tmp_path).generate(src, kt, steps=2, seeds=[1, 2]),
        pipe.generate(src, kt, steps=2, seeds=[1, 2]),
    )
