"""Sharpness-aware updates around the engine's AdamW: SAM and TRAM (``optimizer=sam|tram``).

**SAM** (Foret et al. 2021, "Sharpness-Aware Minimization for Efficiently Improving
Generalization", arXiv 2010.01412) minimises ``max_{‖ε‖ ≤ ρ} L(θ + ε)``. Its first-order solution
of the inner problem (eq. 2) is ``ε̂(θ) = ρ · g / ‖g‖₂`` with ``g = ∇L(θ)``, and the update uses
the gradient at the perturbed point (eq. 3): ``θ ← BaseOptimizer(θ, ∇L(θ)|_{θ + ε̂})``. So each
optimizer step takes two forward–backward passes over the same micro-batches.

**TRAM** (Sherborne et al. 2024, "TRAM: Bridging Trust Regions and Sharpness Aware
Minimization", ICLR 2024, arXiv 2310.03646) replaces SAM's fixed ρ by a trust-region distance:
the divergence between the current model's output distribution and a trust-region target's on the
step's inputs, ``ρ_t = λ · d(f_target(x), f_θ(x))`` (the authors' code
github.com/tomsherborne/tram_optimizer, ``tram.py`` ``TRAM.first_step`` scales ``∇L/‖∇L‖`` by
the ``logit_divergence`` times a ``logit_scale``; ``kl.py`` ``KLDivergence("forward")`` is
``KL(p_target ‖ p_θ)``). Targets (the paper's Table 2): ``pretrained`` is TRAM-θ₀ (the weights
at the start of training), ``previous`` is TRAM-θ_{t−1} (the weights before the last update).
The second pass is SAM's plain loss at θ + ε̂, as in the authors' training step.

Where we depart, on purpose:
- ε̂ uses the gradient of the *whole* optimizer step (every micro-batch on every process), so one
  process × accumulation and N processes give the same update (the paper's m-sharpness splits the
  batch per device; the engine's invariance is worth more here).
- ``d`` is the token mean of ``KL(p_target ‖ p_θ)`` over the step's trained tokens (labels not
  -100, else every attended token), over all micro-batches and processes, both forwards in eval
  mode (no dropout) and without gradient. The authors' ``F.kl_div(reduction="mean")`` also divides
  by the vocabulary size and the batch size; ``tram_scale`` (λ) absorbs such constants.
- The authors' released ``first_step`` multiplies the scale by ``ones_like(p.grad)``; the paper
  (and SAM) use the normalised gradient, which is what we do.
- TRAM-x (noised inputs) and TRAM-Fisher are not implemented.

Cost per optimizer step: SAM ≈ 2× AdamW (a second forward–backward); TRAM ≈ SAM + two no-grad
forwards (current and target model) over the step's micro-batches. ``bench/sam_cost.py`` measures it.
"""

from __future__ import annotations

from typing import Callable

import torch

from posttrain.config import OPTIMIZERS, TRAM_TARGETS  # noqa: F401  (declared with the options)

IGNORE_INDEX = -100


def sam_perturbation(grads: list[torch.Tensor], rho: float) -> list[torch.Tensor]:
    """ε̂ = ρ · g / ‖g‖₂ (Foret et al. 2021, eq. 2), the norm over every tensor of ``grads`` together."""
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
    scale = rho / (norm + 1e-12)
    return [g * scale.to(g.dtype) for g in grads]


def token_kl_sum(target_logits_NV: torch.Tensor, logits_NV: torch.Tensor) -> torch.Tensor:
    """Σ_n KL(p_target,n ‖ p_n), each row a next-token distribution (float32 softmax)."""
    target_logp = torch.log_softmax(target_logits_NV.float(), dim=-1)
    logp = torch.log_softmax(logits_NV.float(), dim=-1)
    return (target_logp.exp() * (target_logp - logp)).sum()


def _lm_inputs(batch: dict) -> tuple[dict, torch.Tensor]:
    """The model inputs of an LM batch and the positions whose next-token distribution counts:
    ``(B, T−1)`` where ``labels[:, 1:]`` is trained (else where the next token is attended)."""
    if "input_ids" not in batch:
        from posttrain.train.engine import TrainingError

        raise TrainingError("optimizer=tram measures the divergence of the model's next-token distributions, "
                            "and this trainer's batches hold no input_ids: use optimizer=sam")
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    if "labels" in batch:
        mask = batch["labels"][:, 1:] != IGNORE_INDEX
    elif "attention_mask" in batch:
        mask = batch["attention_mask"][:, 1:].bool()
    else:
        mask = torch.ones_like(batch["input_ids"][:, 1:], dtype=torch.bool)
    return inputs, mask


@torch.no_grad()
def _next_token_logits(model, inputs: dict, mask_BT: torch.Tensor) -> torch.Tensor:
    """(N, V) logits at the masked positions, through the chunked-head path when the head is a
    plain matmul (no full (B, T, V) tensor), else the model's own logits."""
    from posttrain.models.lm_head import chunkable_head, final_hidden_states

    head = chunkable_head(model)
    if head is not None:
        decoder, weight = head
        hidden_NH = final_hidden_states(model, decoder, inputs)[:, :-1][mask_BT]
        return hidden_NH @ weight.T
    return model(**inputs, use_cache=False).logits[:, :-1][mask_BT]


class SharpnessAware:
    """The second pass of SAM / TRAM for every model the engine trains, and TRAM's target weights.

    ``perturbed_gradients`` runs after the engine's first pass (``∇L(θ)`` in ``.grad``) and before
    clipping and the base optimizer's step: it moves each trainable to θ + ε̂, takes the step's
    gradients again, and puts θ back, leaving ``∇L(θ + ε̂)`` in ``.grad``."""

    def __init__(self, options):
        self.optimizer = options.optimizer
        self.rho = options.sam_rho
        self.target_kind = options.tram_target
        self.scale = options.tram_scale
        self.target: list[torch.Tensor] | None = None   # TRAM: the target weights of the policy's trainable params

    def _trainable(self, model) -> list[torch.nn.Parameter]:
        return [p for p in model.parameters() if p.requires_grad]

    def start(self, engine):
        """After ``accelerate.prepare``: TRAM's target starts as the initial weights (θ₀; for
        ``previous`` also θ_{t−1} of the first step, so its first update is plain)."""
        if self.optimizer == "tram":
            self.target = [p.detach().clone() for p in self._trainable(engine.unwrapped())]

    # ------------------------------------------------------------------ TRAM's trust-region distance
    @torch.no_grad()
    def divergence(self, engine, micro_batches: list[dict]) -> float:
        """Token mean of KL(p_target ‖ p_θ) over the step's counted tokens on every process."""
        model = engine.unwrapped()
        params = self._trainable(model)
        was_training = model.training
        model.eval()
        total, count = torch.zeros((), dtype=torch.float64), 0
        try:
            for batch in micro_batches:
                batch = {k: v.to(engine.device) if torch.is_tensor(v) else v for k, v in batch.items()}
                inputs, mask = _lm_inputs(batch)
                current = _next_token_logits(model, inputs, mask)
                _swap(params, self.target)
                try:
                    target = _next_token_logits(model, inputs, mask)
                finally:
                    _swap(params, self.target)
                total += token_kl_sum(target, current).double().cpu()
                count += int(mask.sum())
        finally:
            model.train(was_training)
        kl_sum, tokens = engine.all_reduce_sum([float(total), float(count)])
        return kl_sum / max(tokens, 1.0)

    # ------------------------------------------------------------------ the second pass
    def perturbed_gradients(self, engine, micro_batches: list[dict], step_fn: Callable,
                            normalizer_fn: Callable | None) -> dict:
        record = {}
        rho = self.rho
        if self.optimizer == "tram":
            distance = self.divergence(engine, micro_batches)
            rho = self.scale * distance
            record["tram_divergence"] = distance
            if self.target_kind == "previous":   # θ_t becomes the next step's θ_{t−1}
                for kept, p in zip(self.target, self._trainable(engine.unwrapped())):
                    kept.copy_(p.detach())
        record["sam_rho"] = rho
        saved = []
        with torch.no_grad():
            for t in engine.trainables:
                params = [p for p in self._trainable(engine.unwrapped(t.model)) if p.grad is not None]
                if not params:
                    continue
                epsilons = sam_perturbation([p.grad for p in params], rho)
                saved.append((params, [p.detach().clone() for p in params]))
                for p, e in zip(params, epsilons):
                    p.add_(e)
        for t in engine.trainables:
            t.optimizer.zero_grad(set_to_none=True)
        try:
            record["sam_loss"], _ = engine.accumulate_gradients(micro_batches, step_fn, normalizer_fn)
        finally:
            with torch.no_grad():   # back to θ exactly (a copy, not θ + ε − ε: no rounding drift)
                for params, originals in saved:
                    for p, original in zip(params, originals):
                        p.copy_(original)
        return record

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {"target": [t.cpu() for t in self.target] if self.target is not None else None}

    def load_state_dict(self, state: dict | None):
        if self.target is None:
            return
        if not state or state.get("target") is None or len(state["target"]) != len(self.target):
            from posttrain.train.engine import TrainingError

            raise TrainingError("this checkpoint holds no TRAM target weights for this model (written with another "
                                "optimizer setting): start a new run folder")
        for kept, saved in zip(self.target, state["target"]):
            kept.copy_(saved)


def _swap(params: list[torch.Tensor], others: list[torch.Tensor]):
    """Exchange the values of ``params`` and ``others`` in place (the model keeps its parameter objects)."""
    for p, other in zip(params, others):
        scratch = p.detach().clone()
        p.data.copy_(other)
        other.copy_(scratch)
