"""Drafters for speculative decoding: DSpark (DFlash is its config without heads)."""

from dsv4.drafters.config import DrafterConfig, dflash_config
from dsv4.drafters.context import ContextKV, FrozenTarget
from dsv4.drafters.dspark import DSpark, Proposal, jit_block_logits, jit_propose, teacher_forced_prev
from dsv4.drafters.losses import drafter_metrics, dspark_losses, loss_weights, tau_prob

__all__ = ["DrafterConfig", "dflash_config", "ContextKV", "FrozenTarget", "DSpark", "Proposal", "jit_block_logits",
           "jit_propose", "teacher_forced_prev", "drafter_metrics", "dspark_losses", "loss_weights", "tau_prob"]
