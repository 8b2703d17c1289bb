"""Drafters for speculative decoding: DSpark (DFlash is its config without heads), EAGLE-3, MTP."""

from dsv4.drafters.config import DrafterConfig, dflash_config, eagle3_config, mtp_config
from dsv4.drafters.context import ContextKV, FrozenTarget
from dsv4.drafters.dspark import DSpark, Proposal, jit_block_logits, jit_propose, teacher_forced_prev
from dsv4.drafters.eagle3 import Eagle3, jit_eagle3_propose, previous_taps
from dsv4.drafters.features import Blocks, TargetFeatures, make_blocks
from dsv4.drafters.losses import drafter_metrics, dspark_losses, loss_weights, tau_prob
from dsv4.drafters.mtp import MTPCache, MTPDrafter, jit_mtp_extend, jit_mtp_propose

__all__ = ["DrafterConfig", "dflash_config", "eagle3_config", "mtp_config", "ContextKV", "FrozenTarget", "DSpark",
           "Proposal", "jit_block_logits", "jit_propose", "teacher_forced_prev", "Eagle3", "jit_eagle3_propose",
           "previous_taps", "MTPCache", "MTPDrafter", "jit_mtp_extend", "jit_mtp_propose", "Blocks", "TargetFeatures",
           "make_blocks", "drafter_metrics", "dspark_losses", "loss_weights", "tau_prob"]
