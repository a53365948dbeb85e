"""The distributed room: one process or many (torchrun DDP / FSDP), the device of this process and the few
collectives training and evaluation share. Floor 0: it imports nothing of anymae.
"""

from anymae.core.distributed.context import DistContext, resolve_device, setup

__all__ = ["DistContext", "resolve_device", "setup"]
