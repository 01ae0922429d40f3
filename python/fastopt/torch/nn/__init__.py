"""Drop-in torch.nn layers on fastopt's kernels: subclasses of torch's own, with the same
constructor arguments, parameters, buffers and state_dict keys, whose forward calls
fastopt.torch.nn.functional. fastopt.torch.convert(model) turns a model's torch layers into
these in place (the same module objects and Parameters, so an optimizer made before still works).
"""

from __future__ import annotations

import torch

from . import functional as F

__all__ = [
    "Conv2d",
    "Linear",
    "BatchNorm1d",
    "BatchNorm2d",
    "Dropout",
    "LayerNorm",
    "GroupNorm",
    "MaxPool2d",
    "ReLU",
    "functional",
]


class Conv2d(torch.nn.Conv2d):
    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.padding_mode != "zeros":  # torch pads explicitly for these modes, and so do we
            input = torch.nn.functional.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(input, weight, bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class Linear(torch.nn.Linear):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, self.weight, self.bias)


class _BatchNorm:
    """torch's _BatchNorm.forward (momentum=None: a cumulative average over num_batches_tracked)
    with fastopt's batch_norm."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        keep = not self.training or self.track_running_stats
        return F.batch_norm(
            input,
            self.running_mean if keep else None,
            self.running_var if keep else None,
            self.weight,
            self.bias,
            use_batch,
            factor,
            self.eps,
        )


class BatchNorm1d(_BatchNorm, torch.nn.BatchNorm1d):
    pass


class BatchNorm2d(_BatchNorm, torch.nn.BatchNorm2d):
    pass


class Dropout(torch.nn.Dropout):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.dropout(input, self.p, self.training, self.inplace)


class LayerNorm(torch.nn.LayerNorm):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


class GroupNorm(torch.nn.GroupNorm):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)


class MaxPool2d(torch.nn.MaxPool2d):
    def forward(self, input: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return F.max_pool2d(
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            ceil_mode=self.ceil_mode,
            return_indices=self.return_indices,
        )


class ReLU(torch.nn.ReLU):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.relu(input, inplace=self.inplace)
