"""Soft prompts (``adapter=prompt``) and ATTEMPT (``adapter=attempt``): a frozen LM that reads
trained input embeddings placed before each row.

- **Prompt tuning** (Lester et al. 2021) through peft: ``N`` virtual-token embeddings, the LM
  frozen. ``SoftPromptLM`` is peft's ``PeftModelForCausalLM`` (so ``save_pretrained``, checkpoints,
  ``generate`` and ``PeftModel.from_pretrained`` work as peft documents) with one change to
  ``forward``: it returns the logits of the row's own tokens, ``(B, T, V)``, not peft's
  ``(B, N + T, V)``, so every trainer and the chunked LM head (``models/lm_head.py``) use it as
  they use any causal LM.
- **ATTEMPT** (Asai et al. 2022, "ATTEMPT: Parameter-Efficient Multi-task Tuning via Attentional
  Mixtures of Soft Prompts", arXiv 2205.11961, §3.2): frozen source prompts ``P_1..P_t`` (prompt
  adapters trained before), a new target prompt ``P_target``, and an attention sub-network that
  mixes them per instance (``AttemptMixture``). Saved as one folder (``attempt_config.json`` +
  ``attempt_model.safetensors`` + tokenizer); ``load_attempt`` reloads it on its base model.

Both put the prompt before the row's embeddings: positions ``0..N−1`` for the prompt and the
row's own positions shifted by ``N``, the attention mask extended with ones. Packed rows (several
sequences in one row) are refused: each sequence would need its own prompt.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import torch

ATTEMPT_CONFIG = "attempt_config.json"
ATTEMPT_WEIGHTS = "attempt_model.safetensors"


class AdapterError(ValueError):
    """A prompt adapter that cannot be built or loaded as asked; the message says why and what to do."""


# ---------------------------------------------------------------------------------------------
# One forward for both: the prompt before the row, the logits of the row

def _decoder(lm) -> torch.nn.Module:
    return getattr(lm, lm.base_model_prefix)


def forward_with_prefix(lm, prefix_BNH: torch.Tensor, input_ids=None, attention_mask=None, position_ids=None,
                        inputs_embeds=None, **kwargs):
    """``lm``'s forward on ``[prefix; row]`` whose outputs cover the row only: a forward hook on
    the decoder (run before any other, so hooks that read the decoder's output, such as the
    chunked LM head's, see the row's hidden states) drops the prefix positions, and the head then
    runs on ``(B, T, H)``. ``labels`` (if given) align with the row as they would without a prefix."""
    embeds_BTH = inputs_embeds if inputs_embeds is not None else lm.get_input_embeddings()(input_ids)
    batch, n = embeds_BTH.shape[0], prefix_BNH.shape[1]
    if position_ids is not None:
        if (position_ids[:, 1:] < position_ids[:, :-1]).any():
            raise AdapterError("a packed row (positions restart inside it) cannot take a soft prompt: each "
                               "sequence would need its own; train with packing=false")
        prompt_positions = torch.arange(n, device=position_ids.device).expand(batch, n)
        position_ids = torch.cat([prompt_positions, position_ids + n], dim=1)
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask.new_ones(batch, n), attention_mask], dim=1)

    def drop_prefix(_module, _args, output):
        output.last_hidden_state = output.last_hidden_state[:, n:]
        return output

    handle = _decoder(lm).register_forward_hook(drop_prefix, prepend=True)
    try:
        return lm(inputs_embeds=torch.cat([prefix_BNH.to(embeds_BTH.dtype), embeds_BTH], dim=1),
                  attention_mask=attention_mask, position_ids=position_ids, **kwargs)
    finally:
        handle.remove()


# ---------------------------------------------------------------------------------------------
# Prompt tuning through peft

def _soft_prompt_class():
    from peft import PeftModelForCausalLM

    class SoftPromptLM(PeftModelForCausalLM):
        """peft prompt tuning whose ``forward`` returns the row's logits ``(B, T, V)``."""

        def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, position_ids=None, **kwargs):
            kwargs.pop("task_ids", None)
            rows = input_ids if input_ids is not None else inputs_embeds
            prompt_BNH = self.get_prompt(batch_size=rows.shape[0])
            return forward_with_prefix(self.base_model, prompt_BNH, input_ids, attention_mask, position_ids,
                                       inputs_embeds, **kwargs)

    return SoftPromptLM


def apply_prompt_tuning(model, num_virtual_tokens: int):
    """Wrap ``model`` (frozen) with ``num_virtual_tokens`` trainable prompt embeddings, each
    initialised from a random vocabulary token's embedding (peft's ``SAMPLE_VOCAB``: a random
    normal prompt would sit far outside the embedding scale of a small model)."""
    from peft import PromptTuningConfig, PromptTuningInit

    config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens,
                                prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB)
    return _soft_prompt_class()(model, config)


def load_prompt_adapter(folder: str | Path, base) -> torch.nn.Module:
    """A saved prompt adapter on ``base`` as a ``SoftPromptLM`` (the same weights
    ``PeftModel.from_pretrained(base, folder)`` loads)."""
    from peft import PeftConfig, set_peft_model_state_dict
    from safetensors.torch import load_file

    config = PeftConfig.from_pretrained(str(folder))
    config.inference_mode = True
    model = _soft_prompt_class()(base, config)
    set_peft_model_state_dict(model, load_file(Path(folder) / "adapter_model.safetensors"))
    return model.eval()


def read_prompt_adapter(folder: str | Path) -> dict:
    """``{num_virtual_tokens, token_dim, base}`` of a saved prompt adapter (no weights loaded), or
    an error naming the folder when it is not one."""
    path = Path(folder)
    config_file = path / "adapter_config.json"
    if not config_file.exists():
        raise AdapterError(f"source prompt {folder}: no adapter_config.json; give the model/ folder of a run "
                           f"trained with adapter=prompt")
    config = json.loads(config_file.read_text())
    if config.get("peft_type") != "PROMPT_TUNING":
        raise AdapterError(f"source prompt {folder}: a {config.get('peft_type')} adapter, not a soft prompt; "
                           f"give the model/ folder of a run trained with adapter=prompt")
    return {"num_virtual_tokens": int(config["num_virtual_tokens"]), "token_dim": config.get("token_dim"),
            "base": config.get("base_model_name_or_path")}


def _prompt_embedding(folder: str | Path) -> torch.Tensor:
    """(N, H) embeddings of a saved prompt adapter."""
    from safetensors.torch import load_file

    weights = load_file(Path(folder) / "adapter_model.safetensors")
    return weights["prompt_embeddings"]


# ---------------------------------------------------------------------------------------------
# ATTEMPT

class AttemptMixture(torch.nn.Module):
    """ATTEMPT's instance-wise prompt (Asai et al. 2022, §3.2, eqs. 2–4).

    For an instance with input embeddings ``X`` (pad positions excluded):
      x̂ = max-pool_t X                                   (d)
      h = LayerNorm(W_up · SiLU(W_down · x̂))             (eq. 2; d → r → d)
      P̂_j = max-pool_l P_j,  j ∈ {1..t, target}          (d)
      a_j = softmax_j(P̂_j · h / T)                       (eq. 3; T = d · e by default)
      P_instance = P_target + Σ_j a_j P_j                 (eq. 4; the sum includes P_target)
    ``sources`` are frozen (a buffer); ``target``, ``down``, ``up`` and ``norm`` train."""

    def __init__(self, sources_SNH: torch.Tensor, target_NH: torch.Tensor, hidden: int = 100,
                 temperature: float | None = None):
        super().__init__()
        d = target_NH.shape[-1]
        self.register_buffer("sources", sources_SNH.detach().clone())
        self.target = torch.nn.Parameter(target_NH.detach().clone())
        self.down = torch.nn.Linear(d, hidden, bias=False)
        self.up = torch.nn.Linear(hidden, d, bias=False)
        self.norm = torch.nn.LayerNorm(d)
        self.temperature = float(temperature) if temperature else d * math.e

    def attention(self, embeds_BTH: torch.Tensor, mask_BT: torch.Tensor | None = None) -> torch.Tensor:
        """(B, t + 1) weights over [sources…, target] for each instance."""
        if mask_BT is not None:
            embeds_BTH = embeds_BTH.masked_fill(~mask_BT.bool()[..., None], float("-inf"))
        pooled_BH = embeds_BTH.max(dim=1).values
        h_BH = self.norm(self.up(torch.nn.functional.silu(self.down(pooled_BH.to(self.down.weight.dtype)))))
        prompts_PNH = torch.cat([self.sources, self.target[None]], dim=0)
        keys_PH = prompts_PNH.max(dim=1).values
        return torch.softmax(h_BH @ keys_PH.T / self.temperature, dim=-1)

    def forward(self, embeds_BTH: torch.Tensor, mask_BT: torch.Tensor | None = None):
        """(instance prompts (B, N, H), attention (B, t + 1))."""
        attention_BP = self.attention(embeds_BTH, mask_BT)
        prompts_PNH = torch.cat([self.sources, self.target[None]], dim=0)
        mixed_BNH = torch.einsum("bp,pnh->bnh", attention_BP, prompts_PNH)
        return self.target[None] + mixed_BNH, attention_BP


class AttemptLM(torch.nn.Module):
    """A frozen causal LM behind ATTEMPT's instance-wise prompt. ``forward`` returns the row's
    logits ``(B, T, V)``; the attention of the last forward is kept in ``last_attention``
    (detached), which the trainer logs per source."""

    def __init__(self, lm, mixture: AttemptMixture, source_names: list[str]):
        super().__init__()
        self.lm = lm
        self.mixture = mixture
        self.source_names = list(source_names)
        self.last_attention: torch.Tensor | None = None
        self.pool_mask: torch.Tensor | None = None   # set by instance_pooling: the tokens x̂ pools over
        for p in self.lm.parameters():
            p.requires_grad_(False)

    @property
    def config(self):
        return self.lm.config

    def get_base_model(self):   # models/lm_head.py reaches the head and decoder through this, as for peft
        return self.lm

    def get_input_embeddings(self):
        return self.lm.get_input_embeddings()

    def _prompt(self, input_ids, attention_mask, inputs_embeds):
        embeds_BTH = inputs_embeds if inputs_embeds is not None else self.lm.get_input_embeddings()(input_ids)
        mask = self.pool_mask if self.pool_mask is not None else attention_mask
        prompt_BNH, attention_BP = self.mixture(embeds_BTH, mask)
        self.last_attention = attention_BP.detach()
        return prompt_BNH, embeds_BTH

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, **kwargs):
        prompt_BNH, embeds_BTH = self._prompt(input_ids, attention_mask, inputs_embeds)
        return forward_with_prefix(self.lm, prompt_BNH, None, attention_mask, position_ids, embeds_BTH, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, **kwargs):
        """``lm.generate`` from ``[instance prompt; row]``; returns ``input_ids`` followed by the
        new tokens, as ``generate`` does for a plain model."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        prompt_BNH, embeds_BTH = self._prompt(input_ids, attention_mask, None)
        n = prompt_BNH.shape[1]
        new = self.lm.generate(inputs_embeds=torch.cat([prompt_BNH.to(embeds_BTH.dtype), embeds_BTH], dim=1),
                               attention_mask=torch.cat([attention_mask.new_ones(len(input_ids), n), attention_mask], 1),
                               **kwargs)
        rows = input_ids.repeat_interleave(kwargs.get("num_return_sequences", 1), dim=0)
        return torch.cat([rows, new.to(rows.device)], dim=1)

    @property
    def attention_names(self) -> list[str]:
        """A short name per mixed prompt: each source's run folder (``runs/NAME/model`` → NAME), then ``target``."""
        names = []
        for source in self.source_names:
            path = Path(source)
            names.append(path.parent.name if path.name == "model" else path.name)
        return names + ["target"]

    def save_pretrained(self, out_dir, **_):
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        m = self.mixture
        save_file({k: v.detach().contiguous().cpu() for k, v in m.state_dict().items()}, out / ATTEMPT_WEIGHTS)
        (out / ATTEMPT_CONFIG).write_text(json.dumps({
            "adapter": "attempt", "base_model_name_or_path": getattr(self.lm, "name_or_path", None),
            "num_virtual_tokens": int(m.target.shape[0]), "token_dim": int(m.target.shape[1]),
            "hidden": int(m.down.out_features), "temperature": m.temperature, "sources": self.source_names,
        }, indent=2))


def apply_attempt(model, source_prompts: list[str], hidden: int = 100, temperature: float | None = None) -> AttemptLM:
    """ATTEMPT on ``model`` from saved prompt adapters (checked by ``check_source_prompts``): the
    target prompt starts as the mean of the sources, as the paper's default initialisation."""
    sources = torch.stack([_prompt_embedding(folder) for folder in source_prompts]).float()
    dtype = model.get_input_embeddings().weight.dtype
    mixture = AttemptMixture(sources, sources.mean(dim=0), hidden, temperature).to(dtype)
    return AttemptLM(model, mixture, [str(s) for s in source_prompts])


def load_attempt(folder: str | Path, base) -> AttemptLM:
    """A saved ATTEMPT folder on its ``base`` model."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config = json.loads((folder / ATTEMPT_CONFIG).read_text())
    weights = load_file(folder / ATTEMPT_WEIGHTS)
    mixture = AttemptMixture(weights["sources"], weights["target"], config["hidden"], config["temperature"])
    mixture.load_state_dict(weights)
    return AttemptLM(base, mixture.to(base.get_input_embeddings().weight.dtype), config["sources"]).eval()


def check_source_prompts(source_prompts: list[str], base_model: str, hidden_size: int | None = None) -> int:
    """Every source is a saved prompt adapter of one size, trained on ``base_model`` (compared as
    resolved paths); returns its number of virtual tokens. Errors name the folder and the fix."""
    from posttrain.models.loading import resolve_model_path

    if not source_prompts:
        raise AdapterError("adapter=attempt: give source_prompts=[DIR, …], the model/ folders of runs trained "
                           "with adapter=prompt")
    want = _same_model(base_model, resolve_model_path)
    if hidden_size is None and want and (Path(want) / "config.json").exists():
        hidden_size = json.loads((Path(want) / "config.json").read_text()).get("hidden_size")
    sizes = {}
    for folder in source_prompts:
        info = read_prompt_adapter(folder)
        if info["base"] and want and _same_model(info["base"], resolve_model_path) != want:
            raise AdapterError(f"source prompt {folder} was trained on {info['base']}, not on model={base_model}: "
                               f"a soft prompt only means something to the model it was trained with")
        if hidden_size is not None and info["token_dim"] and info["token_dim"] != hidden_size:
            raise AdapterError(f"source prompt {folder} has embeddings of size {info['token_dim']}, the model "
                               f"{hidden_size}: train the source on model={base_model}")
        sizes[folder] = info["num_virtual_tokens"]
    if len(set(sizes.values())) > 1:
        listing = ", ".join(f"{f}: {n}" for f, n in sizes.items())
        raise AdapterError(f"source prompts differ in length ({listing}): ATTEMPT mixes prompts of one "
                           f"num_virtual_tokens; retrain the odd one")
    return next(iter(sizes.values()))


def _same_model(spec: str, resolve) -> str | None:
    try:
        return str(Path(resolve(spec)).resolve())
    except Exception:   # an unresolvable spec: compare as written
        return spec


def reads_soft_prompt(model) -> bool:
    """Whether ``model`` puts a soft prompt before every row (``adapter=prompt|attempt``): its
    forward recomputes that prompt from the row, so it cannot continue a cached prompt."""
    if attempt_of(model) is not None:
        return True
    peft_config = getattr(model, "peft_config", None) or {}
    return any(getattr(c, "is_prompt_learning", False) for c in peft_config.values())


def attempt_of(model) -> AttemptLM | None:
    """The ``AttemptLM`` inside ``model`` (DDP / accelerate wrappers unwrapped), or None."""
    while not isinstance(model, AttemptLM) and isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model if isinstance(model, AttemptLM) else None


@contextlib.contextmanager
def prompt_pooling(model, batch: dict):
    """Inside the block an ATTEMPT ``model`` pools x̂ over ``batch``'s untrained, attended tokens
    (the prompt); a no-op for any other model."""
    attempt = attempt_of(model)
    if attempt is None:
        yield None
        return
    mask = batch["labels"] == -100
    if "attention_mask" in batch:
        mask = mask & batch["attention_mask"].bool()
    attempt.pool_mask = mask
    try:
        yield attempt
    finally:
        attempt.pool_mask = None


def instance_pooling(step):
    """Wrap a trainer's ``step(model, batch)`` for ATTEMPT: x̂ pools over the row's untrained tokens
    (the prompt: ``labels`` -100 and attended), as at generation, where the input is the prompt alone
    (the paper's x̂ is the encoder input, never the target). Adds ``attention/<source>`` metrics: the
    mean attention of the step's instances on each prompt."""

    def step_with_pooling(model, batch):
        with prompt_pooling(model, batch) as attempt:
            numerator, metrics = step(model, batch)
        for name, weight in zip(attempt.attention_names, attempt.last_attention.float().mean(dim=0)):
            metrics[f"attention/{name}"] = weight
        return numerator, metrics

    return step_with_pooling
