"""Dense peak FLOP/s of the GPUs the trainer is run on: the MFU denominator where train.peak_flops
is unset, and `huginn-db flops --gpu`'s projection.

Figures are the vendors' datasheet peaks without structured sparsity (NVIDIA's tensor-core
figures are quoted "with sparsity": dense is half). fp32 is the non-tensor-core (CUDA core)
rate; tf32 the tensor-core rate an fp32 matmul gets where torch allows TF32. Sources:
  H100 SXM / NVL, H100 PCIe  NVIDIA H100 Tensor Core GPU datasheet (SXM 67 / 989 / 1,979 TF fp32 /
                             tf32 / bf16 sparse; NVL 60 / 835 / 1,671; PCIe 51 / 756 / 1,513)
  H200 SXM / NVL             NVIDIA H200 Tensor Core GPU datasheet (as H100 SXM; NVL as H100 NVL)
  A100 SXM4 40/80 GB, PCIe   NVIDIA A100 Tensor Core GPU datasheet (19.5 fp32, 156 tf32, 312 bf16/fp16 dense)
  L40S                       NVIDIA L40S datasheet (91.6 fp32, 183 tf32, 362.05 bf16/fp16 dense)
  MI300X                     AMD Instinct MI300X datasheet (163.4 fp32 matrix, 653.7 tf32,
                             1,307.4 bf16/fp16 dense)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DTYPES = ("bf16", "fp16", "tf32", "fp32")


@dataclass(frozen=True)
class GPU:
    name: str
    bf16: float
    fp16: float
    tf32: float
    fp32: float

    def peak(self, dtype: str) -> float:
        return getattr(self, dtype)


T = 1e12
GPUS = {  # `huginn-db flops --gpu` takes these keys
    "h100": GPU("H100 SXM", 1979 / 2 * T, 1979 / 2 * T, 989 / 2 * T, 67 * T),
    "h100-pcie": GPU("H100 PCIe", 1513 / 2 * T, 1513 / 2 * T, 756 / 2 * T, 51 * T),
    "h100-nvl": GPU("H100 NVL", 1671 / 2 * T, 1671 / 2 * T, 835 / 2 * T, 60 * T),
    "h200": GPU("H200 SXM", 1979 / 2 * T, 1979 / 2 * T, 989 / 2 * T, 67 * T),
    "h200-nvl": GPU("H200 NVL", 1671 / 2 * T, 1671 / 2 * T, 835 / 2 * T, 60 * T),
    "a100": GPU("A100", 312 * T, 312 * T, 156 * T, 19.5 * T),
    "l40s": GPU("L40S", 362.05 * T, 362.05 * T, 183 * T, 91.6 * T),
    "mi300x": GPU("MI300X", 1307.4 * T, 1307.4 * T, 653.7 * T, 163.4 * T),
}

# words of torch.cuda.get_device_name(), most specific first: "NVIDIA H100 80GB HBM3" is the SXM
# part, "NVIDIA H100 PCIe" and "NVIDIA H100 NVL" are not; A100 PCIe and SXM share peaks, and a
# GH200's GPU has the H100 / H200 SXM's
DEVICE_NAMES = [
    ("h100 pcie", "h100-pcie"),
    ("h100 nvl", "h100-nvl"),
    ("h200 nvl", "h200-nvl"),
    ("h200", "h200"),
    ("gh200", "h200"),
    ("h100", "h100"),
    ("a100", "a100"),
    ("l40s", "l40s"),
    ("mi300x", "mi300x"),
]


def gpu_key(device_name: str) -> str | None:
    """The GPUS key of a device name as torch reports it, or None for a GPU not in the table."""
    name = " ".join(device_name.lower().replace("-", " ").split())
    return next((key for words, key in DEVICE_NAMES if re.search(rf"\b{words}\b", name)), None)
