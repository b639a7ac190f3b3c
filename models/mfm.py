"""Multimodal Factorization Model (MFM).

Tsai et al., "Learning Factorized Multimodal Representations", ICLR 2019, https://arxiv.org/abs/1806.06176

MFM factorises a multimodal utterance into one **multimodal discriminative** factor :math:`F_y` and one
**modality-specific generative** factor :math:`F_m` per modality (§2 of the paper), here in the regression form of
MMSA 2.2.1 (``models/singleTask/MFM.py`` with ``trains/singleTask/MFM.py``):

- encoders: :math:`Z_m = \\mathrm{FC}(\\mathrm{LSTM}_m(X_m))` (last state) for each modality and
  :math:`Z_y = \\mathrm{FC}(\\mathrm{MFN}(X_{1:M}))` (the Memory Fusion Network's final states and memory,
  :meth:`models.mfn.MFN.encode`);
- factors: :math:`F = \\mathrm{ReLU}(\\mathrm{FC}(\\mathrm{Dropout}(\\mathrm{ReLU}(\\mathrm{FC}(Z)))))`, one small
  MLP per :math:`Z`;
- generative decoders: an LSTM cell started from :math:`[F_y; F_m]` and fed its own previous hidden state for
  ``L`` steps, then a linear map to the feature width, reconstruct :math:`\\hat X_m` (paper eq. 4's
  :math:`G_m(F_y, F_m)` with a sequence decoder);
- discriminative head: :math:`\\hat y = \\mathrm{FC}(\\mathrm{Dropout}(\\mathrm{ReLU}(\\mathrm{FC}(F_y))))`.

Training objective (paper eq. 3, the Wasserstein-autoencoder relaxation with an MMD prior penalty, as in MMSA):

.. math::
    \\mathcal{L} = |y - \\hat y| + \\sum_m \\lambda_m \\,\\mathrm{MSE}(X_m, \\hat X_m)
        + \\lambda_{\\mathrm{MMD}} \\sum_{Z \\in \\{Z_t, Z_a, Z_v, Z_y\\}} \\mathrm{MMD}(Z, \\mathcal{N}(0, I))

with the MMD estimated against one batch of standard-normal samples and the kernel
:math:`k(x, y) = \\exp(-\\tfrac{1}{D} \\mathrm{mean}_d (x_d - y_d)^2)` (MMSA's ``compute_kernel``, which divides the
mean by :math:`D` once more). The task L1 is :class:`~lightning_modules.msa.LitMSA`'s; the reconstruction and MMD
terms are returned, already weighted, as ``aux_losses`` ``recon_text``, ``recon_audio``, ``recon_vision`` and ``mmd``.

Differences from MMSA's code (the paper-faithful reading is kept): padded steps are excluded from the encoders
(packed LSTMs, the last *valid* state) and from the reconstruction MSE (a masked mean); MMSA runs every LSTM over the
padding and reconstructs it. MFM needs word-aligned data (MMSA's ``need_data_aligned: true``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.mfn import MFN
from models.msa_utils import MODALITIES, check_feature_dims, rnn_final_state

__all__ = ["MFM", "masked_mse", "mmd_kernel", "mmd_loss"]


def mmd_kernel(x: Tensor, y: Tensor) -> Tensor:
    """MMSA's Gaussian kernel matrix, :math:`\\exp(-\\mathrm{mean}_d (x_{i,d} - y_{j,d})^2 / D)`.

    Shapes:
        x: ``[N, D]``, y: ``[M, D]`` -> ``[N, M]``.
    """
    dim = x.shape[1]
    return torch.exp(-(x.unsqueeze(1) - y.unsqueeze(0)).pow(2).mean(2) / float(dim))


def mmd_loss(z: Tensor, prior: Tensor | None = None) -> Tensor:
    """Maximum mean discrepancy between the codes ``z`` and samples of :math:`\\mathcal{N}(0, I)`.

    Args:
        z: the codes.
        prior: samples of the prior (default: ``torch.randn_like(z)``).

    Shapes:
        z, prior: ``[N, D]`` -> scalar.
    """
    prior = torch.randn_like(z) if prior is None else prior
    return mmd_kernel(prior, prior).mean() + mmd_kernel(z, z).mean() - 2.0 * mmd_kernel(prior, z).mean()


def masked_mse(x_hat: Tensor, x: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over the valid steps (and every feature) only.

    Shapes:
        x_hat, x: ``[B, L, D]``; mask: ``[B, L]`` bool -> scalar.
    """
    m = mask.to(x.dtype).unsqueeze(-1)
    return ((x_hat - x).pow(2) * m).sum() / (m.sum() * x.shape[-1]).clamp_min(1.0)


class _Factor(nn.Module):
    """``ReLU(FC(Dropout(ReLU(FC(z)))))``: a code :math:`Z` to its factor :math:`F`."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, out_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(out_dim, out_dim), nn.ReLU()
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class SequenceDecoder(nn.Module):
    """LSTM-cell decoder: step 1 reads the code, step :math:`t > 1` reads :math:`h_{t-1}`; a linear map per step.

    Shapes:
        code: ``[B, H]`` -> ``[B, steps, out_dim]``.
    """

    def __init__(self, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(hidden, hidden)
        self.out = nn.Linear(hidden, out_dim)

    def forward(self, code: Tensor, steps: int) -> Tensor:
        h = c = code.new_zeros(code.shape)
        inp, outs = code, []
        for _ in range(steps):
            h, c = self.cell(inp, (h, c))
            outs.append(h)
            inp = h
        return self.out(torch.stack(outs, dim=1))


class MFM(nn.Module):
    """Multimodal Factorization Model for sentiment intensity regression on word-aligned sequences.

    Defaults are MMSA's ``config_regression.json`` values for MOSI (``mfm``). The MFN encoder's arguments keep the
    names of :class:`models.mfn.MFN` (``hidden_dims`` -> ``*_hidden``, ``memsize`` -> ``memory_dim``,
    ``NN1Config`` -> ``attention_*``, ``NN2Config`` -> ``proposal_*``, ``gamma1Config`` -> ``retain_*``,
    ``gamma2Config`` -> ``update_*``; MFM does not use MFN's output MLP, so ``outConfig`` has no counterpart).

    Args:
        feature_dims: feature width per modality, ``{"text": Dt, "audio": Da, "vision": Dv}``.
        seq_lens: sequence length per modality; all three must be equal (aligned data).
        text_hidden: MFN text LSTM width.
        audio_hidden: MFN audio LSTM width.
        vision_hidden: MFN visual LSTM width.
        memory_dim: MFN memory width.
        attention_hidden: MFN delta-memory attention hidden width.
        attention_dropout: its dropout.
        proposal_hidden: MFN memory proposal hidden width.
        proposal_dropout: its dropout.
        retain_hidden: MFN retain gate hidden width.
        retain_dropout: its dropout.
        update_hidden: MFN update gate hidden width.
        update_dropout: its dropout.
        zy_dim: width of the multimodal code :math:`Z_y` (``zy_size``).
        zt_dim: width of the text code :math:`Z_t` (``zl_size``; also the text encoder LSTM width).
        za_dim: width of the audio code (``za_size``).
        zv_dim: width of the visual code (``zv_size``).
        fy_dim: width of the discriminative factor :math:`F_y` (``fy_size``).
        ft_dim: width of the text generative factor (``fl_size``).
        fa_dim: width of the audio generative factor (``fa_size``).
        fv_dim: width of the visual generative factor (``fv_size``).
        zy_dropout: dropout of :math:`Z_y \\to F_y` (``zy_to_fy_dropout``).
        zt_dropout: dropout of :math:`Z_t \\to F_t` (``zl_to_fl_dropout``).
        za_dropout: dropout of :math:`Z_a \\to F_a`.
        zv_dropout: dropout of :math:`Z_v \\to F_v`.
        fy_dropout: dropout of the prediction head (``fy_to_y_dropout``).
        mmd_weight: :math:`\\lambda_{\\mathrm{MMD}}` (``lda_mmd``).
        text_recon_weight: :math:`\\lambda_t` (``lda_xl``).
        audio_recon_weight: :math:`\\lambda_a` (``lda_xa``).
        vision_recon_weight: :math:`\\lambda_v` (``lda_xv``).

    Returns (forward):
        ``{"pred": [B]}``; in training also ``"aux_losses": {"recon_text", "recon_audio", "recon_vision", "mmd"}``
        (weighted).

    Shapes:
        batch["text"]: ``[B, L, Dt]``, batch["audio"]: ``[B, L, Da]``, batch["vision"]: ``[B, L, Dv]``,
        ``*_mask``: ``[B, L]`` bool -> ``{"pred": [B]}``.
    """

    def __init__(
        self,
        feature_dims: dict[str, int],
        seq_lens: dict[str, int] | None = None,
        *,
        text_hidden: int = 128,
        audio_hidden: int = 32,
        vision_hidden: int = 128,
        memory_dim: int = 64,
        attention_hidden: int = 32,
        attention_dropout: float = 0.7,
        proposal_hidden: int = 64,
        proposal_dropout: float = 0.0,
        retain_hidden: int = 32,
        retain_dropout: float = 0.0,
        update_hidden: int = 64,
        update_dropout: float = 0.5,
        zy_dim: int = 80,
        zt_dim: int = 64,
        za_dim: int = 80,
        zv_dim: int = 80,
        fy_dim: int = 64,
        ft_dim: int = 32,
        fa_dim: int = 16,
        fv_dim: int = 64,
        zy_dropout: float = 0.5,
        zt_dropout: float = 0.5,
        za_dropout: float = 0.7,
        zv_dropout: float = 0.5,
        fy_dropout: float = 0.0,
        mmd_weight: float = 100.0,
        text_recon_weight: float = 0.5,
        audio_recon_weight: float = 0.01,
        vision_recon_weight: float = 0.5,
    ) -> None:
        super().__init__()
        check_feature_dims("MFM", feature_dims)
        if seq_lens is not None:
            self._check_aligned({m: seq_lens[m] for m in MODALITIES if m in seq_lens}, "seq_lens")
        widths = (zy_dim, zt_dim, za_dim, zv_dim, fy_dim, ft_dim, fa_dim, fv_dim)
        if min(widths) <= 0:
            raise ValueError("MFM: every code and factor width must be positive")
        for p in (zy_dropout, zt_dropout, za_dropout, zv_dropout, fy_dropout):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"MFM: dropouts must be in [0, 1), got {p}")
        weights = (mmd_weight, text_recon_weight, audio_recon_weight, vision_recon_weight)
        if min(weights) < 0:
            raise ValueError(f"MFM: loss weights must be non-negative, got {weights}")
        self.feature_dims = dict(feature_dims)
        self.mmd_weight = mmd_weight
        self.recon_weights = {"text": text_recon_weight, "audio": audio_recon_weight, "vision": vision_recon_weight}
        z_dims = {"text": zt_dim, "audio": za_dim, "vision": zv_dim}
        f_dims = {"text": ft_dim, "audio": fa_dim, "vision": fv_dim}
        z_drop = {"text": zt_dropout, "audio": za_dropout, "vision": zv_dropout}

        # Modality-specific generative encoders: LSTM (width = code width) + FC, as MMSA's encoderLSTM.
        self.encoders = nn.ModuleDict({m: nn.LSTM(feature_dims[m], z_dims[m], batch_first=True) for m in MODALITIES})
        self.encoder_fc = nn.ModuleDict({m: nn.Linear(z_dims[m], z_dims[m]) for m in MODALITIES})
        # Multimodal discriminative encoder: MFN's final states and memory -> Z_y.
        self.mfn = MFN(
            feature_dims, seq_lens, text_hidden=text_hidden, audio_hidden=audio_hidden, vision_hidden=vision_hidden,
            memory_dim=memory_dim, attention_hidden=attention_hidden, attention_dropout=attention_dropout,
            proposal_hidden=proposal_hidden, proposal_dropout=proposal_dropout, retain_hidden=retain_hidden,
            retain_dropout=retain_dropout, update_hidden=update_hidden, update_dropout=update_dropout, head="none",
        )
        self.to_zy = nn.Linear(self.mfn.out_dim, zy_dim)
        self.factor_y = _Factor(zy_dim, fy_dim, zy_dropout)
        self.factors = nn.ModuleDict({m: _Factor(z_dims[m], f_dims[m], z_drop[m]) for m in MODALITIES})
        self.decoders = nn.ModuleDict(
            {m: SequenceDecoder(fy_dim + f_dims[m], feature_dims[m]) for m in MODALITIES}
        )
        self.head = nn.Sequential(nn.Linear(fy_dim, fy_dim), nn.ReLU(), nn.Dropout(fy_dropout), nn.Linear(fy_dim, 1))

    def extra_repr(self) -> str:
        return (f"feature_dims={self.feature_dims}, mmd_weight={self.mmd_weight}, "
                f"recon_weights={self.recon_weights}")

    @staticmethod
    def _check_aligned(lengths: dict[str, int], what: str) -> None:
        if len(set(lengths.values())) > 1:
            raise ValueError(
                f"MFM: needs word-aligned data (equal sequence lengths), got {what} {lengths}; "
                "use an aligned feature file (e.g. aligned_50.pkl)"
            )

    def encode(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """The multimodal code :math:`Z_y` and the modality codes :math:`Z_m`.

        Shapes:
            batch as in the class docstring -> (``[B, zy_dim]``, ``{m: [B, z_m]}``).
        """
        self._check_aligned({m: batch[m].shape[1] for m in MODALITIES}, "batch lengths")
        z = {
            m: self.encoder_fc[m](rnn_final_state(self.encoders[m], batch[m], batch[f"{m}_mask"])[-1])
            for m in MODALITIES
        }
        return self.to_zy(self.mfn.encode(batch)), z

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor | dict[str, Tensor]]:
        zy, z = self.encode(batch)
        fy = self.factor_y(zy)
        out: dict[str, Tensor | dict[str, Tensor]] = {"pred": self.head(fy).squeeze(-1)}
        if not self.training:
            return out
        aux: dict[str, Tensor] = {}
        steps = batch["text"].shape[1]
        for m in MODALITIES:
            x_hat = self.decoders[m](torch.cat([fy, self.factors[m](z[m])], dim=-1), steps)
            aux[f"recon_{m}"] = self.recon_weights[m] * masked_mse(x_hat, batch[m], batch[f"{m}_mask"])
        aux["mmd"] = self.mmd_weight * sum(mmd_loss(code) for code in (*z.values(), zy))
        out["aux_losses"] = aux
        return out
