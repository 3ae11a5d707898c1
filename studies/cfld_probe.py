"""What does a trained CFLD denoiser listen to? (issue 13: what PRD and HGA buy)

On held-out test pairs, at a few noise levels, this measures how much the denoiser's output moves when one
condition is changed and the rest kept, as the RMS of the change over the RMS of the output:

* **appearance**: each pair's source swapped for another person's (the prompt, the HGA biases and, with
  reference attention, the reference tokens: the whole of ``encode_source``);
* **HGA off**: only the HGA query biases set to 0 (the prompt and any reference tokens kept, so a
  reference-attention checkpoint keeps its reference attention);
* **pose**: each pair's target pose swapped for that other pair's.

It also reads the coarse prompt itself: how different the ``num_queries`` tokens are from each other
(spread over tokens) and from one person to the next (spread over people), both over the prompt's RMS. A
prompt whose tokens are all alike leaves HGA nothing to choose between: a query bias only re-weights the
prompt tokens. ::

    python -m studies.cfld_probe --generator DIR [DIR ...] --data MARKET --out probe.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from posereid.argtypes import positive_int
from posereid.experiments.quality.pairs import load_eval_pairs
from posereid.models import load_generator
from posereid.models.io_utils import atomic_write
from posereid.models.sampling import initial_noise, model_timesteps, noisy_sample

#: noise levels probed, as fractions of the training schedule (σ for flow, t / T for DDPM)
LEVELS = (0.25, 0.5, 0.75)


def _rms(x: torch.Tensor) -> float:
    return float(x.float().pow(2).mean().sqrt())


def split_source(
    model: Any, appearance: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """``CFLDModel.encode_source``'s ``(prompt, *hga_biases, *reference_tokens)`` taken apart as ``(prompt,
    hga_biases, reference_tokens)``: the model has one bias per HGA projection (``hga_proj``), the rest of
    the tail are reference tokens."""
    prompt, *tail = appearance
    n_bias = len(model.hga_proj)
    return prompt, tail[:n_bias], tail[n_bias:]


def _other_person(pids: list[int]) -> torch.Tensor:
    """For each pair, the next pair (cyclically) whose source is another person."""
    n = len(pids)
    out = []
    for i in range(n):
        j = next((k % n for k in range(i + 1, i + n) if pids[k % n] != pids[i]), None)
        if j is None:
            raise ValueError("every selected pair shows the same person: nothing to swap the source with")
        out.append(j)
    return torch.tensor(out)


@torch.no_grad()
def probe(generator_dir: str | Path, data: str | Path, *, n_pairs: int = 32, seed: int = 0) -> dict[str, Any]:
    """Sensitivities of one CFLD checkpoint (see the module docstring); needs ``n_pairs >= 2``."""
    gen = load_generator(generator_dir, device="cpu")
    if gen.family != "cfld":
        raise ValueError(f"{generator_dir}: a {gen.family} checkpoint; the probe reads CFLD's prompt and HGA")
    if n_pairs < 2:
        raise ValueError("n_pairs must be >= 2 (conditions are swapped between pairs)")
    model = gen.model
    pairs = load_eval_pairs(data, gen.image_size, n_pairs=n_pairs, seed=seed)
    source, target = pairs.source, pairs.target
    b = source.shape[0]
    swap = _other_person(pairs.source_pid.tolist())
    prompt, biases, refs = split_source(model, model.encode_source(source))
    other_prompt, other_biases, other_refs = split_source(model, model.encode_source(source[swap]))
    pose = model.encode_pose(gen.pose_maps(torch.from_numpy(pairs.target_kps), batch=b))
    other_pose = tuple(p[swap] for p in pose)
    zero = [torch.zeros_like(x) for x in biases]  # HGA off: the biases only, the reference tokens kept
    x0 = gen.encode_target(target, torch.Generator().manual_seed(seed))
    noise = initial_noise(x0.shape, torch.Generator().manual_seed(seed + 1), x0.device)
    steps = gen.scheduler.config.num_train_timesteps
    rows = []
    for level in LEVELS:
        draws = torch.full((b,), int(level * steps), dtype=torch.long)
        t = model_timesteps(gen.scheduler, draws)
        x = noisy_sample(gen.scheduler, x0, noise, t)
        out = model(x, t, pose, prompt, biases, refs)
        scale = _rms(out)
        rows.append({
            "level": level,
            "appearance": _rms(model(x, t, pose, other_prompt, other_biases, other_refs) - out) / scale,
            "hga": _rms(model(x, t, pose, prompt, zero, refs) - out) / scale if biases else 0.0,
            "pose": _rms(model(x, t, other_pose, prompt, biases, refs) - out) / scale,
        })  # fmt: skip
    p = prompt.float()
    return {
        "generator": str(generator_dir),
        "use_prd": bool(model.config.use_prd),
        "use_hga": bool(model.config.use_hga),
        "n_pairs": b,
        "prompt_token_spread": _rms(p - p.mean(1, keepdim=True)) / _rms(p),
        "prompt_person_spread": _rms(p - p.mean(0, keepdim=True)) / _rms(p),
        "sensitivity": rows,
    }


def render(results: list[dict[str, Any]]) -> str:
    """Markdown: one row per checkpoint, sensitivities averaged over the noise levels ("HGA off (biases
    only)": the HGA biases zeroed, prompt and reference tokens kept)."""
    lines = [
        "| generator | prompt: token spread | prompt: person spread | appearance swap | HGA off (biases only) "
        "| pose swap |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        mean = {
            k: sum(s[k] for s in r["sensitivity"]) / len(r["sensitivity"])
            for k in ("appearance", "hga", "pose")
        }
        lines.append(
            f"| {r['generator']} | {r['prompt_token_spread']:.3f} | {r['prompt_person_spread']:.3f} | "
            f"{mean['appearance']:.4f} | {mean['hga']:.5f} | {mean['pose']:.4f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.cfld_probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--generator", nargs="+", required=True, help="CFLD checkpoint directories")
    parser.add_argument("--data", required=True, help="Market-format folder with test pairs")
    parser.add_argument("--n-pairs", type=positive_int, default=32)
    parser.add_argument(
        "--out", type=Path, required=True, help="JSON file (a .md table is written beside it)"
    )
    args = parser.parse_args(argv)
    results = [probe(g, args.data, n_pairs=args.n_pairs) for g in args.generator]
    table = render(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out) as fh:
        json.dump(results, fh, indent=1)
    with atomic_write(args.out.with_suffix(".md")) as fh:
        fh.write(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
