"""A masked autoencoder over several modalities at once: CAV-MAE's audio-visual MAE, MultiMAE's parts.

Each *part* is a registered modality with its own tokenizer, a learned modality embedding, its own masking
strategy and ratio, target and decoder. The visible tokens of every part go through one shared encoder; each
part's decoder reconstructs that part from its own slice of the encoder's output (CAV-MAE's separate decoders);
the loss is the sum of ``loss_weight x`` each part's masked-patch loss, plus, with a
:class:`~anymae.core.model.contrastive.ContrastiveTerm`, its weight x CAV-MAE's contrastive loss between the parts.

The joint token sequence is the parts' token sequences concatenated in part order, so one mask ``(N, L)``
(``L`` = the sum of the parts' token counts) says everything: each part's slice is that part's mask, and a
slice that removes every token of a part *drops* the part from that sample (modality dropout, or ``encode`` /
``forward`` on a subset of the parts). A dropped part's visible slots are left out of every attention, and the
part counts in no loss for that sample.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from anymae.core.model.contrastive import ContrastiveTerm
from anymae.core.model.decoder import LearnedMaskToken
from anymae.core.model.encoder import MaskedEncoder
from anymae.core.model.joint_decoder import JointDecoder
from anymae.core.model.loss import masked_mse
from anymae.core.model.mae import init_linear_and_norm, target_to_pixels
from anymae.core.model.masking import MaskingStrategy, gather_tokens, keep_count, sample_mask
from anymae.core.model.targets import Target
from anymae.core.model.tokenizer import TokenEmbedder, Tokenizer

__all__ = ["CompositeMasker", "CompositeOutput", "MultiModalMAE", "Part", "PartsTokenizer", "PartsView"]

Inputs = Mapping[str, Tensor]  # part name -> that modality's input batch (N, ...)


class Part(nn.Module):
    """One modality of a composite: tokenizer, modality embedding (1, 1, D), its own encoder ``blocks`` (none by
    default), decoder, and how it is masked and scored. ``decoder=None``: an encoder-only part."""

    def __init__(
        self,
        *,
        tokenizer: Tokenizer,
        decoder: nn.Module | None,
        embed_dim: int,
        masking: MaskingStrategy,
        mask_ratio: float,
        target: Target,
        pred_masked_only: bool = False,
        loss_weight: float = 1.0,
        blocks: nn.ModuleList | None = None,
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.modality_embed = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # CAV-MAE's modality-specific blocks: the part's visible tokens alone, before the shared encoder.
        self.blocks = blocks if blocks is not None else nn.ModuleList()
        self.decoder = decoder
        self.masking, self.mask_ratio, self.target = masking, mask_ratio, target
        self.pred_masked_only, self.loss_weight = pred_masked_only, loss_weight

    @property
    def num_tokens(self) -> int:
        return self.tokenizer.num_tokens

    def forward_target(self, x: Tensor) -> Tensor:
        """x -> target (N, L_p, P_p)."""
        return self.target(self.tokenizer.patchify(x), tokenizer=self.tokenizer)

    def pred_to_pixels(self, x: Tensor, pred: Tensor, mask: Tensor | None = None) -> Tensor:
        """A prediction (N, L_p, P_p) in target space -> patch values (``target_to_pixels``)."""
        return target_to_pixels(self.target, self.tokenizer, x, pred, mask)


class CompositeOutput(NamedTuple):
    """What :meth:`MultiModalMAE.forward` returns; ``out[0]`` is the loss, as for a single-modality MAE."""

    loss: Tensor  # sum over the parts of loss_weight x the part's masked-patch loss (+ weight x contrastive)
    pred: dict[str, Tensor]  # part -> (N, L_p, P_p) in target space (0 at kept tokens with pred_masked_only)
    mask: Tensor  # (N, L) float, 1 = removed, the parts' slices in part order
    losses: dict[str, Tensor]  # part -> its masked-patch loss over the samples that have it (detached)
    contrastive: Tensor | None = None  # the contrastive loss before its weight (detached); None without the term


class CompositeMasker:
    """One sample's joint mask ``masker(generator) -> bool (L,)``, True = removed: each part's slice drawn by its
    own strategy and ratio, then, with probability ``dropout``, one part (chosen uniformly) removed whole.
    Picklable, for the DataLoader workers (see :class:`~anymae.core.model.masking.SampleMasker`)."""

    def __init__(self, parts: Sequence[tuple[MaskingStrategy, tuple[int, ...], float]], *, dropout: float) -> None:
        self.parts, self.dropout = list(parts), dropout

    def __call__(self, generator: torch.Generator) -> Tensor:
        cpu = torch.device("cpu")
        masks = [sample_mask(strategy, batch=1, grid=grid, mask_ratio=ratio, device=cpu, generator=generator)[0]
                 for strategy, grid, ratio in self.parts]  # fmt: skip
        if self.dropout > 0 and float(torch.rand(1, generator=generator)) < self.dropout:
            masks[int(torch.randint(len(masks), (1,), generator=generator))][:] = True
        return torch.cat(masks)  # (L,)


class MultiModalMAE(nn.Module):
    """Parts -> per-part masking -> one shared visible-only encoder -> per-part decoders -> weighted masked loss.

    ``encoder`` is a :class:`MaskedEncoder` whose position table is the parts' own tables concatenated in part
    order (each part keeps the positions its modality defines); each part adds its modality embedding to its
    tokens. ``decoder``: a :class:`~anymae.core.model.joint_decoder.JointDecoder` over every part's tokens (CAV-MAE), or
    None for each part's own decoder. ``modality_dropout`` is the share of training samples that lose one part
    (drawn with the mask). ``contrastive``: CAV-MAE's contrastive term between the parts' pooled representations,
    computed on the same masks (:meth:`forward_contrastive`).
    """

    def __init__(
        self,
        *,
        parts: dict[str, Part],
        encoder: MaskedEncoder,
        decoder: JointDecoder | None = None,
        modality_dropout: float = 0.0,
        contrastive: ContrastiveTerm | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.parts = nn.ModuleDict(parts)
        self.encoder = encoder
        self.decoder = decoder  # one decoder over every part's tokens; None: each part's own
        self.contrastive = contrastive
        if decoder is not None and any(p.decoder is not None for p in parts.values()):
            raise ValueError("a joint decoder replaces the parts' own decoders: build the parts without one")
        self.modality_dropout = modality_dropout
        self.spans: dict[str, tuple[int, int]] = {}  # part -> its [start, stop) in the joint token sequence
        start = 0
        for name, part in parts.items():
            self.spans[name] = (start, start + part.num_tokens)
            start += part.num_tokens
        table = encoder.pos_embed.shape[1] - encoder.num_prefix
        if table != start:
            raise ValueError(f"encoder position table has {table} rows, the parts have {start} tokens")
        self.config: dict[str, Any] = dict(config or {})
        self.initialize_weights()

    @property
    def num_tokens(self) -> int:
        """L: the joint sequence's length."""
        return sum(part.num_tokens for part in self.parts.values())

    def initialize_weights(self) -> None:
        """The official MAE init for the encoder and decoders (as :class:`MaskedAutoencoder`); CLS, mask tokens
        and modality embeddings N(0, 0.02) (CAV-MAE's modality embeddings are truncated-normal 0.02)."""
        decoders = self.decoders()
        tokens = [self.encoder.cls_token, *(d.mask_token for d in decoders if isinstance(d, LearnedMaskToken))]
        tokens += [p.modality_embed for p in self.parts.values()]
        if self.decoder is not None:
            tokens += list(self.decoder.modality_embed.values())
        for token in tokens:
            if token is not None:
                nn.init.normal_(token, std=0.02)
        heads = [self.contrastive] if self.contrastive is not None else []
        for module in (self.encoder, *decoders, *(p.blocks for p in self.parts.values()), *heads):
            module.apply(init_linear_and_norm)

    def decoders(self) -> list[nn.Module]:
        """The joint decoder, or each part's."""
        if self.decoder is not None:
            return [self.decoder]
        return [p.decoder for p in self.parts.values() if p.decoder is not None]

    def sample_masker(self, *, dropout: bool = True) -> CompositeMasker:
        """The data pipeline's per-sample joint mask (with modality dropout unless ``dropout=False``)."""
        parts = [(p.masking, tuple(p.tokenizer.grid), p.mask_ratio) for p in self.parts.values()]
        return CompositeMasker(parts, dropout=self.modality_dropout if dropout else 0.0)

    def draw_mask(self, batch: int, *, generator: torch.Generator | None = None, dropout: bool = False) -> Tensor:
        """(N, L) bool joint masks, one :meth:`sample_masker` draw per sample, on the CPU."""
        if generator is None:
            generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))
        masker = self.sample_masker(dropout=dropout)
        return torch.stack([masker(generator) for _ in range(batch)])

    def drop(self, mask: Tensor, names: Sequence[str]) -> Tensor:
        """A copy of the joint mask (N, L) with the parts ``names`` removed whole."""
        mask = mask.clone()
        for name in names:
            start, stop = self._span(name)
            mask[:, start:stop] = True
        return mask

    def part_mask(self, mask: Tensor, name: str) -> Tensor:
        """The slice (N, L_p) of a joint mask (N, L) that belongs to part ``name``."""
        start, stop = self._span(name)
        return mask[:, start:stop]

    # --- the paper's stages, per part -----------------------------------------------------------------
    def forward_encoder(self, x: Inputs, mask: Tensor) -> tuple[Tensor, dict[str, _Layout]]:
        """x: part -> input (N, ...), mask (N, L) bool, True = removed -> latent (N, num_prefix + L_vis, D) and
        each present part's layout (its kept ids, where its tokens sit in the latent, which samples have it).

        A part missing from ``x`` is dropped from every sample (its slice of ``mask`` is ignored)."""
        self._check_inputs(x, mask)
        n = mask.shape[0]
        tokens, ids, valid, layouts = [], [], [], {}
        offset = self.encoder.num_prefix
        for name, part in self.parts.items():
            start, stop = self.spans[name]
            if name not in x:
                tokens.append(mask.new_zeros(n, stop - start, self.encoder.embed_dim, dtype=torch.float32))
                continue
            tok = part.tokenizer(x[name]) + part.modality_embed  # (N, L_p, D)
            tokens.append(tok)
            layout = _layout(mask[:, start:stop], part.mask_ratio, name=name)
            layouts[name] = layout._replace(offset=offset)
            ids.append(layout.ids_keep + start)  # (N, K_p) in joint token numbers
            valid.append(layout.present[:, None].expand_as(layout.ids_keep))  # (N, K_p)
            offset += layout.ids_keep.shape[1]
        if not layouts:
            raise ValueError(f"no part of the model in the inputs: give one of {', '.join(self.parts)}")
        joint = torch.cat([t.float() for t in tokens], dim=1)  # (N, L, D); + positions is float32 anyway
        keep = torch.cat(ids, dim=1)  # (N, L_vis)
        present = torch.cat(valid, dim=1)  # (N, L_vis)
        if not bool(present.any(dim=1).all()):
            raise ValueError("a sample has every part removed: keep at least one part of each sample")
        x = gather_tokens(joint + self.encoder.pos_embed[:, self.encoder.num_prefix :], keep)  # (N, L_vis, D)
        x = self._part_blocks(x, layouts)
        latent = self.encoder.forward_visible(x, None if bool(present.all()) else present)  # (N, prefix + L_vis, D)
        return latent, layouts

    def _part_blocks(self, x: Tensor, layouts: dict[str, _Layout]) -> Tensor:
        """Each part's own blocks over its visible tokens (N, K_p, D), in place in x (N, L_vis, D)."""
        if not any(len(self.parts[name].blocks) for name in layouts):
            return x
        pieces, start = [], 0
        for name, layout in layouts.items():
            piece = x[:, start : start + layout.ids_keep.shape[1]]  # (N, K_p, D)
            for block in self.parts[name].blocks:
                piece = block(piece)
            pieces.append(piece)
            start += layout.ids_keep.shape[1]
        return torch.cat(pieces, dim=1)

    def forward_decoder(self, latent: Tensor, layout: _Layout, name: str) -> Tensor:
        """The part's decoder over its own slice of the latent -> pred (N, L_p, P_p) in target space; with
        ``pred_masked_only`` the head runs on the removed tokens only and pred is 0 at kept ones."""
        part = self.parts[name]
        if part.decoder is None:
            raise RuntimeError(f"part {name!r} has no decoder (the model was built or loaded encoder-only)")
        k = self.encoder.num_prefix
        own = latent[:, layout.offset : layout.offset + layout.ids_keep.shape[1]]  # (N, K_p, D)
        latent_p = torch.cat([latent[:, :k], own], dim=1)  # (N, k + K_p, D)
        if not part.pred_masked_only:
            return part.decoder(latent_p, layout.ids_restore)  # (N, L_p, P_p)
        removed = layout.ids_shuffle[:, layout.ids_keep.shape[1] :]  # (N, L_rem): removed ids, ascending
        pred_removed = part.decoder(latent_p, layout.ids_restore, removed)  # (N, L_rem, P_p)
        pred = pred_removed.new_zeros(*layout.ids_restore.shape, pred_removed.shape[-1])
        return pred.scatter(1, removed.unsqueeze(-1).expand_as(pred_removed), pred_removed)

    def forward_loss(self, x: Tensor, pred: Tensor, mask: Tensor, name: str, present: Tensor) -> Tensor:
        """Part ``name``'s masked-patch loss: the mean over the removed tokens of the samples that have the part
        (``present`` (N,) bool) of the per-token MSE; 0 (with a gradient path) when no sample has it."""
        weights = mask.float() * present[:, None].float()  # (N, L_p)
        if not bool(weights.any()):
            return pred.sum() * 0.0
        return masked_mse(pred.float(), self.parts[name].forward_target(x).float(), weights)

    def forward(self, x: Inputs, *, mask: Tensor | None = None) -> CompositeOutput:
        """x: part -> input (N, ...) -> (loss, pred per part, joint mask (N, L) float, loss per part).

        ``mask`` (N, L) bool, True = removed: the joint mask (the data pipeline draws it with each sample, see
        :meth:`sample_masker`); default: drawn here, with modality dropout in training mode."""
        n = next(iter(x.values())).shape[0]
        device = next(iter(x.values())).device
        if mask is None:
            mask = self.draw_mask(n, dropout=self.training)
        mask = mask.to(device)
        latent, layouts = self.forward_encoder(x, mask)
        if self.decoder is not None:
            columns = {name: (slice(lay.offset, lay.offset + lay.ids_keep.shape[1]), lay.ids_restore, lay.present)
                       for name, lay in layouts.items()}  # fmt: skip
            preds = self.decoder(latent, columns)
        else:
            preds = {name: self.forward_decoder(latent, layout, name) for name, layout in layouts.items()}
        losses = {}
        total = latent.new_zeros((), dtype=torch.float32)
        for name, layout in layouts.items():
            pred = preds[name]
            loss = self.forward_loss(x[name], pred, self.part_mask(mask, name), name, layout.present)
            losses[name] = loss.detach()
            total = total + self.parts[name].loss_weight * loss
        contrastive = None
        if self.contrastive is not None:
            contrastive = self.forward_contrastive(x, mask)
            total = total + self.contrastive.weight * contrastive
            contrastive = contrastive.detach()
        return CompositeOutput(total, preds, mask.float(), losses, contrastive)

    def forward_contrastive(self, x: Inputs, mask: Tensor) -> Tensor:
        """CAV-MAE's contrastive loss (weight not applied) between the parts in ``x``: each part's visible tokens
        under ``mask`` (every token with ``contrastive.masked: false``) through the encoder alone, mean-pooled."""
        assert self.contrastive is not None
        reps, present = {}, {}
        for name in self.parts:
            if name in x:
                reps[name], present[name] = self.pooled_alone(x, mask, name)
        return self.contrastive({name: self.contrastive.embed(name, pooled) for name, pooled in reps.items()}, present)

    def pooled_alone(self, x: Inputs, mask: Tensor | None, name: str) -> tuple[Tensor, Tensor]:
        """Part ``name`` through the encoder with no other part: its tokens kept by ``mask`` (N, L) (None or
        ``contrastive.masked: false``: all of them), mean-pooled after the final norm -> (N, D), and which samples
        have the part (N,) bool. A sample that dropped the part is encoded on another sample's mask (its row
        is not used)."""
        n = next(iter(x.values())).shape[0]
        device = x[name].device
        own = torch.zeros(n, self.parts[name].num_tokens, dtype=torch.bool, device=device)
        present = torch.ones(n, dtype=torch.bool, device=device)
        masked = self.contrastive.masked if self.contrastive is not None else True
        if mask is not None:
            present = ~self.part_mask(mask, name).all(dim=1)
        if mask is not None and masked:
            own = self.part_mask(mask, name).clone()  # (N, L_p)
            # A sample without the part is encoded on another's mask, or whole when none has it.
            own[~present] = own[present][0] if bool(present.any()) else False
        joint = torch.ones(n, self.num_tokens, dtype=torch.bool, device=device)
        start, stop = self._span(name)
        joint[:, start:stop] = own
        latent, _ = self.forward_encoder({name: x[name]}, joint)  # (N, prefix + K_p, D)
        return latent[:, self.encoder.num_prefix :].mean(dim=1), present

    def encode(self, x: Inputs) -> Tensor:
        """Features with no masking, over the parts in ``x`` (any subset): (N, num_prefix + L_present, D), CLS
        first if any, then each present part's tokens in part order, after the final LayerNorm."""
        n = next(iter(x.values())).shape[0]
        device = next(iter(x.values())).device
        mask = torch.zeros(n, self.num_tokens, dtype=torch.bool, device=device)
        return self.forward_encoder(x, mask)[0]

    def restricted(self, names: Sequence[str]) -> PartsView:
        """This model seen through some of its parts: ``encode`` takes the full inputs and keeps only ``names``
        (for k-NN / features of one part, or of a subset; the weights are this model's own)."""
        for name in names:
            self._span(name)
        return PartsView(self, names)

    # --- helpers ------------------------------------------------------------------------------------------
    def _span(self, name: str) -> tuple[int, int]:
        if name not in self.spans:
            raise KeyError(f"no part {name!r} in this model; its parts: {', '.join(self.spans)}")
        return self.spans[name]

    def _check_inputs(self, x: Inputs, mask: Tensor) -> None:
        unknown = [name for name in x if name not in self.parts]
        if unknown:
            raise KeyError(f"inputs name parts {unknown} that this model has not; its parts: {', '.join(self.parts)}")
        n = next(iter(x.values())).shape[0]
        if mask.dtype != torch.bool or tuple(mask.shape) != (n, self.num_tokens):
            raise ValueError(
                f"mask must be bool (N, L) = ({n}, {self.num_tokens}) over the parts "
                f"{', '.join(f'{k} {b - a}' for k, (a, b) in self.spans.items())}, got {mask.dtype} {tuple(mask.shape)}"
            )


class PartsTokenizer(TokenEmbedder):
    """Some parts of a composite as one tokenizer, for a classifier over them: ``{part: input}`` -> each part's
    tokens plus its modality embedding and its own positions, through its own blocks, concatenated in part order
    (N, L, D). The positions are added here, before the part blocks, so :meth:`position_table` is zero: the shared
    encoder adds nothing more. Its ``parts`` keep the composite's parameter names (``parts.<part>.tokenizer.*``,
    ``parts.<part>.modality_embed``, ``parts.<part>.blocks.*``). It has no patches: a classifier regresses none."""

    def __init__(self, parts: dict[str, Part], *, embed_dim: int) -> None:
        super().__init__()
        self.parts = nn.ModuleDict(parts)
        self.embed_dim = embed_dim
        self.grid = (sum(part.num_tokens for part in parts.values()),)
        for name, part in parts.items():  # fixed, recomputed from the grids: not stored in checkpoints
            self.register_buffer(f"pos_{name}", part.tokenizer.position_table(embed_dim)[None], persistent=False)

    def forward(self, x: Inputs) -> Tensor:
        """x: part -> input (N, ...) -> (N, L, D)."""
        missing = [name for name in self.parts if name not in x]
        if missing:
            raise KeyError(f"inputs lack the parts {missing}; this classifier reads {', '.join(self.parts)}")
        pieces = []
        for name, part in self.parts.items():
            # The buffer is named for the part, a name from the config (model.parts).
            piece = part.tokenizer(x[name]) + part.modality_embed + self.get_buffer(f"pos_{name}")  # (N, L_p, D)
            for block in part.blocks:
                piece = block(piece)
            pieces.append(piece)
        return torch.cat(pieces, dim=1)

    def position_table(self, width: int) -> Tensor:
        """Zeros (L, width): the parts' positions are already in the tokens."""
        return torch.zeros(self.grid[0], width)


class PartsView(nn.Module):
    """:meth:`MultiModalMAE.restricted`: ``encode`` over some of the parts (a module holding the model itself)."""

    def __init__(self, model: MultiModalMAE, names: Sequence[str]) -> None:
        super().__init__()
        self.model, self.names = model, list(names)
        self.train(model.training)  # a new module is in training mode; the view starts as the model is

    @property
    def encoder(self) -> MaskedEncoder:
        return self.model.encoder

    def encode(self, x: Inputs) -> Tensor:
        """(N, num_prefix + L_names, D): the features of the parts ``names`` seen alone."""
        return self.model.encode({name: x[name] for name in self.names})


class _Layout(NamedTuple):
    """How one part's tokens were masked: ``ids_keep`` (N, K_p) kept ids ascending, ``ids_shuffle`` /
    ``ids_restore`` (N, L_p), ``present`` (N,) the samples that have the part, ``offset`` its first slot in the
    encoder's output."""

    ids_keep: Tensor
    ids_shuffle: Tensor
    ids_restore: Tensor
    present: Tensor
    offset: int = 0


def _layout(mask: Tensor, ratio: float, *, name: str) -> _Layout:
    """A part's slice of the joint mask (N, L_p) -> its layout. Samples that keep none of the part's tokens have
    dropped it; the others must keep the same count (a mask strategy always does). A dropped sample gets the
    same number of (ignored) kept slots, so the batch stays one rectangle."""
    num_tokens = mask.shape[1]
    removed = mask.sum(dim=1)  # (N,)
    present = removed < num_tokens
    counts = (num_tokens - removed)[present]
    if counts.numel() and not bool((counts == counts[0]).all()):
        raise ValueError(f"part {name!r}: the mask keeps {counts.tolist()} tokens per sample; it must keep the same")
    kept = int(counts[0]) if counts.numel() else keep_count(num_tokens, ratio)
    # A stable sort puts the kept (0) ids first in ascending order, the removed ones after, also ascending; a
    # dropped sample (all 1) keeps the identity order.
    ids_shuffle = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)  # (N, L_p)
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # (N, L_p)
    return _Layout(ids_shuffle[:, :kept], ids_shuffle, ids_restore, present)
