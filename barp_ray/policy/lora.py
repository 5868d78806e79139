"""End-to-end encoder fine-tuning under the REINFORCE loss: LoRA adapters (peft) on the torch MiniLM.

`EncoderPolicy` computes h(x) in the loop: token ids (B, T) -> MiniLM with LoRA adapters on its attention
projections -> mean pool -> the usual `BarpPolicy` head. The adapters start at zero (peft's LoRA B = 0), so
the untrained policy is exactly the frozen-encoder policy; training moves only the adapters and the head.
It runs in process (`training.bare.train_in_process` on a `token_id_table`, `encoder_finetune: lora`); the
Ray Train job and serving keep the frozen encoder. On CPU it is for tiny subsets only (a 256 x 128-token
batch costs ~2 TFLOP forward + backward); benchmarks/lora_finetune.py takes `--device cuda` where a GPU is.
"""

from __future__ import annotations

import torch
from torch import nn

from barp_ray.embeddings.encoder import EncoderSpec, load_encoder
from barp_ray.policy.model import BarpPolicy

#: MiniLM / BERT attention projections the adapters go on (peft `target_modules`).
LORA_TARGETS = ("query", "value")


class EncoderPolicy(nn.Module):
    """pi(a | x, w) with the sentence encoder inside: input token ids (B, T) padded with `pad_id`."""

    def __init__(self, encoder: str | EncoderSpec, policy: BarpPolicy, pad_id: int, rank: int = 8) -> None:
        from peft import LoraConfig, get_peft_model

        super().__init__()
        spec = encoder if isinstance(encoder, EncoderSpec) else EncoderSpec.parse(encoder)
        transformer = load_encoder(spec.with_overrides(backend="torch"), device="cpu")[0].auto_model
        config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=list(LORA_TARGETS))
        self.encoder = get_peft_model(transformer, config)  # base weights frozen, adapters trainable
        self.policy = policy
        self.spec = policy.spec
        self.pad_id = pad_id

    def token_states(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T, D) last hidden states, zero at padding (what `BarpPolicy` mean-pools)."""
        mask = ids != self.pad_id
        states = self.encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        return states * mask.unsqueeze(-1)

    def forward(self, ids: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.policy(self.token_states(ids), w)

    @torch.no_grad()
    def act(self, ids: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.forward(ids, w).argmax(dim=-1)
