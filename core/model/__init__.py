"""The model room: the MAE itself as plain ``nn.Module``s, from the tokenizer seam to the masked loss.

Tokenizer and modality interfaces (the seams a plugin fills), random masking, fixed position tables, the
visible-only encoder, the mask-token decoder (single or joint), reconstruction targets and the masked loss,
the assembled :class:`MaskedAutoencoder` and the composite :class:`MultiModalMAE`, and the reconstruction
figures' drawing kit. Floor 1: it may import only :mod:`anymae.core.data` (the data errors a modality raises),
torch and timm; nothing here reads a config or a file.
"""

from anymae.core.model.composite import MultiModalMAE
from anymae.core.model.decoder import MaskedDecoder
from anymae.core.model.encoder import MaskedEncoder
from anymae.core.model.mae import MaskedAutoencoder
from anymae.core.model.masking import MaskingStrategy, random_masking
from anymae.core.model.modality import Modality
from anymae.core.model.tokenizer import TokenEmbedder, Tokenizer

__all__ = [
    "MaskedAutoencoder",
    "MaskedDecoder",
    "MaskedEncoder",
    "MaskingStrategy",
    "Modality",
    "MultiModalMAE",
    "TokenEmbedder",
    "Tokenizer",
    "random_masking",
]
