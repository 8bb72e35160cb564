"""Weighted prompts and the spherical-distance prompt loss."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from generators.errors import InvalidRequest


@dataclass(frozen=True)
class WeightedPrompt:
    text: str
    weight: float


def parse_prompts(spec: str, argument: str = "prompts") -> list[WeightedPrompt]:
    """Parse ``"coral reef:1 | blurry:-0.5"``: prompts separated by ``|``, each
    with an optional ``:weight`` suffix (default 1). Only a suffix that reads as
    a number is a weight, so ``"photo: a reef"`` stays one prompt. A negative
    weight pushes the image away from that prompt.

    Raises ``InvalidRequest`` for an empty prompt, a non-finite weight, or
    weights that are all zero.
    """
    if not spec or not spec.strip():
        raise InvalidRequest(f"{argument} is empty; give at least one prompt, e.g. 'coral reef' or 'coral reef:1 | blurry:-0.5'")
    prompts = []
    for part in spec.split("|"):
        text, weight = part.strip(), 1.0
        head, sep, tail = text.rpartition(":")
        if sep:
            try:
                weight = float(tail)
                text = head.strip()
            except ValueError:
                pass
        if not text:
            raise InvalidRequest(f"{argument} {spec!r} has an empty prompt between '|' separators")
        if not math.isfinite(weight):
            raise InvalidRequest(f"{argument} {spec!r}: weight {weight} of {text!r} must be a finite number")
        prompts.append(WeightedPrompt(text, weight))
    if all(p.weight == 0 for p in prompts):
        raise InvalidRequest(f"{argument} {spec!r}: all weights are zero; at least one must be non-zero")
    return prompts


def spherical_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared great-circle distance between unit vectors, ``2 * arcsin(|a - b| / 2)^2``.

    This is the prompt loss of Katherine Crowson's VQGAN+CLIP notebook (2021),
    which the seed's experiments used (it calls it "symmetric cross entropy";
    the values it reports, ~0.90 at the start falling to ~0.63-0.65 after 1000
    steps, are this quantity for one prompt with weight 1: a cosine similarity
    of 0.2 gives 0.94, of 0.35 gives 0.74). It equals half the squared angle
    between the vectors. Both inputs must be L2-normalised.
    """
    return (a - b).norm(dim=-1).div(2).arcsin().pow(2).mul(2)


def prompt_loss(image_embeds: torch.Tensor, prompt_embeds: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted prompt loss per candidate.

    ``image_embeds`` (candidates, cutouts, d), ``prompt_embeds`` (prompts, d),
    ``weights`` (prompts,) -> (candidates,): for each prompt, the mean distance
    over the cutouts times the prompt's weight, summed over prompts.
    """
    distances = spherical_distance(image_embeds[:, :, None, :], prompt_embeds[None, None, :, :])
    return (distances.mean(dim=1) * weights).sum(dim=-1)
