"""The multi-task U-net of Ke et al. (section 3.2, eq. 6) and a plain single-task U-net.

Both share one contracting path: ``len(widths)`` resolution levels, each two blocks of
3x3 convolution + BatchNorm + LeakyReLU(0.01), with 2x2 max-pooling between levels.

The multi-task expansive path has one multi-task block per level. With ``x`` the detection
path, ``z`` the segmentation path, ``y`` the separation path and ``c`` the skip connection::

    x_{l+1}   = F_l(up(x_l), c_l)                 detection (task 1)
    z_{l+1/2} = F_l(up(z_l), c_l)                 segmentation shares F_l's weights (task 3)
    z_{l+1}   = z_{l+1/2} + R_l(z_{l+1/2})        plus a residual sub-block
    y_{l+1}   = G_l(up(y_l), z_{l+1})             separation (task 2) fed by segmentation

``up`` is bilinear up-sampling by 2. A 1x1 convolution head per task gives logits; the
softmax is applied by the loss and by prediction.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .labels import DETECTION, SEGMENTATION, SEPARATION, TASKS, n_task_classes
from .options import ARCHITECTURES, CPU_DEFAULT_SIZE, GPU_DEFAULT_SIZE, MODEL_SIZES

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model; saved with every checkpoint.

    Args:
        in_channels: channels of the network's input: 1 (gray) or 3 (RGB) when ``channels``
            is ``None``, else ``len(channels)``.
        n_classes: number of classes including the background (detection/segmentation).
        widths: channels per level, e.g. ``(16, 32, 64, 128, 256)``; depth = ``len(widths)``.
        size: the name of ``widths`` in :data:`MODEL_SIZES`, or ``"custom"``.
        architecture: ``"multitask"`` (the paper's network) or ``"unet"`` (single task).
        tasks: tasks the network predicts; a ``"unet"`` predicts one task.
        norm_percentiles: per-image intensity normalisation: these percentiles map to 0 and 1.
        negative_slope: LeakyReLU slope (paper: 0.01).
        scale: working scale: images are resized by this factor before they reach the network
            (0.5 = half the height and width) and predictions are resized back, so that large
            objects fit in the network's patches. Chosen from the objects' size when training
            starts (:func:`napari_lazylabels.core.data.auto_scale`) and saved with the model.
        object_diameter: typical object diameter in pixels of the training images (median
            over the exact masks' objects, else over the detection marks; see
            :func:`napari_lazylabels.core.data.object_size`), measured when training starts;
            prediction derives its instance post-processing from it. ``None``: unknown.
        interface_threshold: the interface probability that best cut the objects of the
            training images with exact masks, chosen when training ends
            (:func:`napari_lazylabels.core.calibrate.tune_interface_threshold`); prediction uses
            it unless told otherwise. ``None``: not tuned (0.5 is used). A threshold tuned after
            the checkpoint was written is kept beside it
            (:func:`napari_lazylabels.core.checkpoint.save_calibration`) and applied on loading.
        channels: the channels of a multi-channel image the network reads, in order (e.g.
            ``(0, 2)`` of a 3-channel fluorescence image), each normalised with its own
            intensity range (:func:`napari_lazylabels.core.prepare.prepare_image`). ``None``:
            a gray or RGB model (one range over all channels; every model before channels
            were chosen).
        source_channels: channels per pixel of the images the model takes (``C`` of
            ``(H, W, C)``); images with another number are refused. ``None`` with
            ``channels`` ``None``.
    """

    in_channels: int = 1
    n_classes: int = 2
    widths: tuple[int, ...] = MODEL_SIZES[CPU_DEFAULT_SIZE]
    size: str = CPU_DEFAULT_SIZE
    architecture: str = "multitask"
    tasks: tuple[str, ...] = TASKS
    norm_percentiles: tuple[float, float] = (1.0, 99.8)
    negative_slope: float = 0.01
    scale: float = 1.0
    object_diameter: float | None = None
    interface_threshold: float | None = None
    channels: tuple[int, ...] | None = None
    source_channels: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "norm_percentiles", tuple(float(p) for p in self.norm_percentiles))
        self._check_channels()
        if self.n_classes < 2:
            raise ValueError("n_classes counts the background too and must be >= 2.")
        if len(self.widths) < 2 or min(self.widths) < 1:
            raise ValueError(f"widths needs at least 2 positive levels, got {self.widths}.")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}.")
        unknown = set(self.tasks) - set(TASKS)
        if unknown or not self.tasks:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {self.tasks}.")
        if self.architecture == "unet" and len(self.tasks) != 1:
            raise ValueError("A single-task 'unet' predicts exactly one task.")
        object.__setattr__(self, "scale", float(self.scale))
        if self.object_diameter is not None:
            object.__setattr__(self, "object_diameter", float(self.object_diameter))
            if not self.object_diameter > 0:
                raise ValueError(f"object_diameter must be > 0 pixels, got {self.object_diameter}.")
        if self.interface_threshold is not None:
            object.__setattr__(self, "interface_threshold", float(self.interface_threshold))
            if not 0 < self.interface_threshold <= 1:
                raise ValueError(f"interface_threshold is a probability in (0, 1], got {self.interface_threshold}.")
        if not 0.0625 <= self.scale <= 4:
            raise ValueError(f"scale (the working scale) must be in [1/16, 4], got {self.scale}.")
        lo, hi = self.norm_percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"norm_percentiles must satisfy 0 <= low < high <= 100, got {lo, hi}.")

    def _check_channels(self) -> None:
        """``in_channels``, ``channels`` and ``source_channels`` agree (see the class)."""
        if self.channels is None:
            if self.source_channels is not None:
                raise ValueError("source_channels is given with channels only.")
            if self.in_channels not in (1, 3):
                raise ValueError(
                    f"in_channels must be 1 (gray) or 3 (RGB) without channels, got {self.in_channels}; "
                    "a multi-channel model names its channels (channels=(0, 1), source_channels=2)."
                )
            return
        channels = tuple(int(c) for c in self.channels)
        object.__setattr__(self, "channels", channels)
        source = self.source_channels
        if source is None or int(source) < 1:
            raise ValueError(f"channels {channels} need source_channels, the channels of the images (>= 1).")
        object.__setattr__(self, "source_channels", int(source))
        if not channels or len(set(channels)) != len(channels) or not all(0 <= c < source for c in channels):
            raise ValueError(f"channels must be distinct indices below source_channels={source}, got {channels}.")
        if self.in_channels != len(channels):
            raise ValueError(f"in_channels must be len(channels) = {len(channels)}, got {self.in_channels}.")

    @property
    def depth(self) -> int:
        return len(self.widths)

    @property
    def divisor(self) -> int:
        """Input sizes are padded to a multiple of this."""
        return 2 ** (self.depth - 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        d["tasks"] = list(self.tasks)
        d["norm_percentiles"] = list(self.norm_percentiles)
        d["channels"] = None if self.channels is None else list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """The config of a saved dict; keys this version does not know are ignored (older
        checkpoints hold training-only experiment settings such as ``separation_feedback``,
        which change no prediction)."""
        known = set(cls.__dataclass_fields__)
        ignored = sorted(set(d) - known)
        if ignored:
            log.debug("Model settings not used by this version, ignored: %s", ", ".join(ignored))
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def named(cls, size: str, **kwargs) -> ModelConfig:
        """A config of a named size (see :data:`MODEL_SIZES`)."""
        if size not in MODEL_SIZES:
            raise ValueError(f"Unknown model size {size!r}; choose one of {list(MODEL_SIZES)}.")
        return cls(widths=MODEL_SIZES[size], size=size, **kwargs)


def default_size(device: torch.device | str) -> str:
    """The default model size for a device: the paper's on a GPU, a smaller one on a CPU."""
    return CPU_DEFAULT_SIZE if torch.device(device).type == "cpu" else GPU_DEFAULT_SIZE


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then MPS, then the CPU; other names are checked to exist."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was requested but no CUDA GPU is available; use device='cpu' or 'auto'.")
    if dev.type == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise ValueError("MPS was requested but is not available; use device='cpu' or 'auto'.")
    return dev


def cpu_bf16_supported() -> bool:
    """Whether this CPU computes bf16 natively (Intel AMX or AVX512-BF16).

    On other CPUs (AVX2-only x86 such as most laptops and AMD EPYC/Ryzen before Zen 4, and
    ARM builds of torch) bf16 is emulated and several times slower than float32 (figures in
    docs/benchmarks.md, "CPU precision").
    """
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # a private probe that changed: float32 is the safe answer
            continue
    return False


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype that speeds training and prediction up on a device, or ``None``.

    CUDA: bf16 (fp16 on cards without bf16). CPU: bf16 where the CPU has it natively
    (:func:`cpu_bf16_supported`; with channels-last several times faster than float32),
    otherwise ``None`` (float32: emulated bf16 is slower still; see docs/benchmarks-speed.md).
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the context that runs a forward pass in ``dtype`` on ``device``.

    ``dtype`` is :func:`autocast_dtype`'s choice (or an explicit one); ``None`` gives a context
    that does nothing (float32). Training, prediction and the speed benchmark enter
    ``autocast(device, dtype)()`` around each forward pass.
    """
    if dtype is None:
        return contextlib.nullcontext
    return functools.partial(torch.autocast, torch.device(device).type, dtype=dtype)


def precision_name(dtype: torch.dtype | None) -> str:
    """``"float32"`` for no autocast (:func:`autocast_dtype` gave ``None``), else the autocast
    dtype's name, e.g. ``"bfloat16"``: for logs and records."""
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


# --------------------------------------------------------------------------- building blocks
class _SerialBackwardBatchNorm(torch.autograd.Function):
    """Training-mode batch norm whose backward runs PyTorch's own kernel on one thread.

    Shapes: input ``(B, C, H, W)``; output the same.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum: float, eps: float):
        y, mean, invstd = torch.ops.aten.native_batch_norm(
            x, weight, bias, running_mean, running_var, True, momentum, eps
        )
        ctx.save_for_backward(x, weight, running_mean, running_var, mean, invstd)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight, running_mean, running_var, mean, invstd = ctx.saved_tensors
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
                grad, x, weight, running_mean, running_var, mean, invstd, True, ctx.eps,
                [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]],
            )
        finally:
            torch.set_num_threads(threads)
        return gx, gw, gb, None, None, None, None


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (same parameters, buffers and results) that trains faster on a CPU.

    PyTorch's channels-last CPU backward sums per thread into adjacent rows of one buffer of
    ``C`` floats; unless ``C`` is a multiple of 16 (64-byte cache lines) the threads write to
    shared cache lines at every pixel, and two threads take longer than one. For such widths,
    in training on a multi-threaded CPU, the backward runs on one thread; everything else is PyTorch's own
    kernel (docs/benchmarks.md, "Training and prediction speed").
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            not torch.compiler.is_compiling()  # compiled code has kernels of its own
            and self.training and self.track_running_stats and self.momentum is not None
            and self.num_features % 16 and x.device.type == "cpu" and x.requires_grad
            and x.is_contiguous(memory_format=torch.channels_last) and torch.get_num_threads() > 1
        ):
            self.num_batches_tracked.add_(1)
            return _SerialBackwardBatchNorm.apply(
                x, self.weight, self.bias, self.running_mean, self.running_var, self.momentum, self.eps
            )
        return super().forward(x)


def conv_of_concat(block: nn.Sequential, parts: list[torch.Tensor]) -> torch.Tensor:
    """``block(torch.cat(parts, 1))`` for a :class:`DoubleConv`, without the concatenated copy.

    The first convolution of a channel concatenation is the sum of convolutions of its parts
    (weights split along the input channels), so the concatenated tensor (at full resolution
    the largest of the decoder) is never written or read, and no part gets a channel slice of
    its gradient (a slice is strided in neither memory format, and bilinear up-sampling's
    backward converts such slices of channels-last tensors to NCHW and back). Training is a
    little faster than with a concatenation whose backward hands contiguous gradients back
    (docs/benchmarks.md, "Training and prediction speed").
    A part with a smaller batch serves every group of stacked paths (the shared decoder runs
    detection and segmentation as one batch of ``2B`` on one skip connection of ``B``): its
    share of the convolution is computed once instead of on a repeated copy (fewer FLOPs).
    Without gradients (prediction) one convolution of the concatenation is the faster one.

    Args:
        block: a :class:`DoubleConv` (its first convolution may carry a bias: fused BatchNorm).
        parts: ``(B_i, C_i, H, W)`` tensors whose channels add up to the block's input
            channels; every ``B_i`` divides the largest, ``N``.

    Returns:
        ``(N, C_out, H, W)``.
    """
    n = max(p.shape[0] for p in parts)
    if not torch.is_grad_enabled():
        return block(torch.cat([p.repeat(n // p.shape[0], 1, 1, 1) for p in parts], 1))
    conv, norm, act = block[0]
    h, start = None, 0
    for part in parts:
        c = part.shape[1]
        out = F.conv2d(part, conv.weight[:, start : start + c], conv.bias if h is None else None, padding=1)
        start += c
        if h is None:
            h = out
        else:
            big, small = (h, out) if h.shape[0] >= out.shape[0] else (out, h)
            b = small.shape[0]
            h = (big.unflatten(0, (big.shape[0] // b, b)) + small).flatten(0, 1)
    return block[1](act(norm(h)))


class ConvBlock(nn.Sequential):
    """3x3 convolution + BatchNorm + LeakyReLU: one grey block of the paper's Fig. 2."""

    def __init__(self, cin: int, cout: int, slope: float) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            BatchNorm2d(cout),
            nn.LeakyReLU(slope, inplace=True),
        )


class DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int, slope: float) -> None:
        super().__init__(ConvBlock(cin, cout, slope), ConvBlock(cout, cout, slope))


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class Encoder(nn.Module):
    """Contracting path. Input ``(B, C, H, W)`` with H, W multiples of ``2**(depth-1)``;
    returns the ``depth`` feature maps, finest first."""

    def __init__(self, cin: int, widths: tuple[int, ...], slope: float) -> None:
        super().__init__()
        chans = (cin, *widths)
        self.levels = nn.ModuleList(DoubleConv(a, b, slope) for a, b in zip(chans[:-1], chans[1:], strict=True))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, level in enumerate(self.levels):
            if i:
                x = F.max_pool2d(x, 2)
            x = level(x)
            feats.append(x)
        return feats


def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """An inference copy of ``model`` with every BatchNorm folded into its convolution.

    In eval mode BatchNorm is an affine map per channel, so ``bn(conv(x))`` is one convolution
    with scaled weights and a bias; the copy skips one pass over every feature map, which
    makes prediction faster. ``model`` itself is left as it is (training goes on with it).

    Args:
        model: a :class:`MultiTaskUNet` or :class:`UNet` (any module; only our ``ConvBlock``
            layers are fused).

    Returns:
        The fused copy, in eval mode; its outputs equal ``model.eval()``'s up to rounding.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(model).eval()
    for block in fused.modules():
        if isinstance(block, ConvBlock) and isinstance(block[1], nn.BatchNorm2d):
            block[0] = fuse_conv_bn_eval(block[0], block[1])
            block[1] = nn.Identity()
    return fused


class MultiTaskBlock(nn.Module):
    """One multi-task block (eq. 6): shared ``F``, segmentation residual ``R``, separation ``G``.

    ``separation_feedback`` scales the gradient that ``G`` sends back into the segmentation
    path (see :class:`MultiTaskUNet`).
    """

    def __init__(self, cin: int, cskip: int, cout: int, slope: float, separation: bool,
                 separation_feedback: float = 1.0) -> None:
        super().__init__()
        self.separation_feedback = separation_feedback
        self.shared = DoubleConv(cin + cskip, cout, slope)
        self.residual = DoubleConv(cout, cout, slope)
        self.separation = DoubleConv(cin + cout, cout, slope) if separation else None

    def forward(self, x, z, y, skip, first: bool):
        """One block on the paths that are not ``None`` (``y`` needs ``z``).

        In the ``first`` block ``x`` and ``z`` are the same bottleneck (``x_0 = z_0``), so
        ``F`` runs once for both; later ``F`` runs on ``x`` and ``z`` as one batch.
        """
        if first:
            xz = conv_of_concat(self.shared, [_up(x if x is not None else z), skip])
            x = xz if x is not None else None
            z = xz if z is not None else None
        elif x is not None and z is not None:
            b = x.shape[0]
            xz = conv_of_concat(self.shared, [_up(torch.cat([x, z], 0)), skip])
            x, z = xz[:b], xz[b:]
        elif x is not None:
            x = conv_of_concat(self.shared, [_up(x), skip])
        else:
            z = conv_of_concat(self.shared, [_up(z), skip])
        if z is not None:
            z = z + self.residual(z)
        if y is not None:
            y = conv_of_concat(self.separation, [_up(y), scale_gradient(z, self.separation_feedback)])
        return x, z, y


def scale_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` unchanged in the forward pass; its gradient multiplied by ``factor`` backwards."""
    if factor == 1.0:
        return x
    if factor == 0.0:
        return x.detach()
    d = x.detach()
    return d + factor * (x - d)


def _pad_to(x: torch.Tensor, divisor: int) -> tuple[torch.Tensor, tuple[int, int]]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


class MultiTaskUNet(nn.Module):
    """The paper's multi-task U-net.

    Args:
        config: a :class:`ModelConfig` with ``architecture="multitask"``.
        separation_feedback: how much of the separation loss's gradient reaches the
            segmentation path and the bottleneck that feed the separation decoder (and through
            them the shared layers): 1 is the paper's network (the product's), 0 trains the
            separation decoder on features it cannot change. The forward pass, and so
            prediction, is the same for every value, so it is not part of the config;
            experiments build the network with another value
            (``functools.partial(MultiTaskUNet, separation_feedback=0.5)`` as ``train_iter``'s
            ``model_factory``; ``benchmarks/accuracy.py --sep-feedback``).

    Shapes:
        input ``(B, in_channels, H, W)``, any H, W >= 1 (padded internally, output cropped);
        output ``{"detection": (B, n_classes, H, W), "separation": (B, 2, H, W),
        "segmentation": (B, n_classes, H, W)}`` logits, for the tasks in ``config.tasks``.
    """

    def __init__(self, config: ModelConfig, separation_feedback: float = 1.0) -> None:
        super().__init__()
        if not 0 <= separation_feedback <= 1:
            raise ValueError(f"separation_feedback is a share of a gradient in [0, 1], got {separation_feedback}.")
        self.config = config
        self.separation_feedback = float(separation_feedback)
        w, s = config.widths, config.negative_slope
        self.encoder = Encoder(config.in_channels, w, s)
        want_sep = SEPARATION in config.tasks
        self.blocks = nn.ModuleList(
            MultiTaskBlock(w[i + 1], w[i], w[i], s, want_sep, self.separation_feedback)
            for i in reversed(range(len(w) - 1))
        )
        self.heads = nn.ModuleDict(
            {t: nn.Conv2d(w[0], n_task_classes(t, config.n_classes), 1) for t in config.tasks}
        )

    def forward(self, image: torch.Tensor, tasks: Collection[str] | None = None) -> dict[str, torch.Tensor]:
        """Logits of every task, or of ``tasks`` only.

        Only the paths those heads need are computed: without detection the shared decoder
        runs on the segmentation path alone, without separation its decoder is skipped
        (segmentation runs whenever separation is asked for, which it feeds). In eval mode the
        outputs asked for equal those of the full forward pass; in training mode BatchNorm's
        batch statistics of the shared decoder then come from fewer paths.
        """
        want = self.config.tasks if tasks is None else tuple(tasks)
        unknown = set(want) - set(self.heads)
        if unknown or not want:
            raise ValueError(f"This model predicts {list(self.heads)}; asked for {sorted(set(want))}.")
        x, (h, w) = _pad_to(image, self.config.divisor)
        feats = self.encoder(x)
        bottleneck = feats[-1]
        det = bottleneck if DETECTION in want else None
        seg = bottleneck if SEGMENTATION in want or SEPARATION in want else None
        sep = (
            scale_gradient(bottleneck, self.separation_feedback)  # G_0 also reads the bottleneck
            if SEPARATION in want else None
        )
        for i, (block, skip) in enumerate(zip(self.blocks, reversed(feats[:-1]), strict=True)):
            det, seg, sep = block(det, seg, sep, skip, first=i == 0)
        paths = {DETECTION: det, SEGMENTATION: seg, SEPARATION: sep}
        return {t: self.heads[t](paths[t])[..., :h, :w] for t in self.heads if t in want}


class UNet(nn.Module):
    """A plain single-task U-net with the same contracting path (the paper's baseline).

    Shapes:
        input ``(B, in_channels, H, W)``; output ``{task: (B, n_task_classes, H, W)}`` logits.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        w, s = config.widths, config.negative_slope
        self.encoder = Encoder(config.in_channels, w, s)
        self.decoder = nn.ModuleList(
            DoubleConv(w[i + 1] + w[i], w[i], s) for i in reversed(range(len(w) - 1))
        )
        (task,) = config.tasks
        self.task = task
        self.head = nn.Conv2d(w[0], n_task_classes(task, config.n_classes), 1)

    def forward(self, image: torch.Tensor, tasks: Collection[str] | None = None) -> dict[str, torch.Tensor]:
        """Logits of the model's one task (``tasks``, if given, must name it)."""
        if tasks is not None and set(tasks) != {self.task}:
            raise ValueError(f"This model predicts ['{self.task}']; asked for {sorted(set(tasks))}.")
        x, (h, w) = _pad_to(image, self.config.divisor)
        feats = self.encoder(x)
        x = feats[-1]
        for block, skip in zip(self.decoder, reversed(feats[:-1]), strict=True):
            x = conv_of_concat(block, [_up(x), skip])
        return {self.task: self.head(x)[..., :h, :w]}


def build_model(config: ModelConfig) -> nn.Module:
    """Build the network a config describes."""
    return MultiTaskUNet(config) if config.architecture == "multitask" else UNet(config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
