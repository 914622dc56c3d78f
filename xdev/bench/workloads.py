"""The benchmark's workloads and their FLOP counts."""
from __future__ import annotations

from dataclasses import dataclass

# VGG-16's 13 convolutions: (name, C, O, H=W at a 224x224 input); all 3x3, stride 1, pad 1.
VGG16: list[tuple[str, int, int, int]] = [
    ("conv1_1", 3, 64, 224), ("conv1_2", 64, 64, 224),
    ("conv2_1", 64, 128, 112), ("conv2_2", 128, 128, 112),
    ("conv3_1", 128, 256, 56), ("conv3_2", 256, 256, 56), ("conv3_3", 256, 256, 56),
    ("conv4_1", 256, 512, 28), ("conv4_2", 512, 512, 28), ("conv4_3", 512, 512, 28),
    ("conv5_1", 512, 512, 14), ("conv5_2", 512, 512, 14), ("conv5_3", 512, 512, 14),
]

# What the lecture showed (jcjohnson/cnn-benchmarks, VGG-16, batch 16, forward pass of the
# whole network, so pooling, ReLU and the fully connected layers are included).
PUBLISHED = {
    "source": "jcjohnson/cnn-benchmarks (cs231n lecture 8), VGG-16 forward, batch 16",
    "rows": [
        {"device": "Pascal Titan X", "what": "cuDNN 5.1", "batch": 16, "ms": 41.6},
        {"device": "Pascal Titan X", "what": "Torch nn (im2col + cuBLAS)", "batch": 16, "ms": 98.2},
        {"device": "dual Xeon E5-2630 v3", "what": "CPU (Torch, BLAS)", "batch": 16, "ms": 3101.8},
    ],
}


def matmul_flops(M: int, N: int, K: int, batch: int = 1) -> int:
    return 2 * M * N * K * batch


def conv_flops(N: int, O: int, Ho: int, Wo: int, C: int, groups: int, kh: int, kw: int) -> int:
    return 2 * N * O * Ho * Wo * (C // groups) * kh * kw


@dataclass(frozen=True)
class ConvLayer:
    name: str
    N: int
    C: int
    O: int
    H: int

    @property
    def flops(self) -> int:
        return conv_flops(self.N, self.O, self.H, self.H, self.C, 1, 3, 3)

    @property
    def shape(self) -> str:
        return f"{self.N}x{self.C}x{self.H}x{self.H} * {self.O}x{self.C}x3x3"


def vgg16(batch: int, image: int = 224) -> list[ConvLayer]:
    """The 13 layers for an image x image input (224: the real network)."""
    return [ConvLayer(n, batch, c, o, max(1, image * h // 224)) for n, c, o, h in VGG16]


MATMUL_SIZES = [128, 256, 512, 1024, 2048, 4096]
MATMUL_SIZES_QUICK = [128, 512, 1024]
SKINNY = (32, 4096, 4096)  # (M, K, N): a batch of 32 through a 4096-wide layer
SKINNY_QUICK = (32, 1024, 1024)
TRANSFER_BYTES = [1 << 16, 1 << 20, 1 << 24, 1 << 26]
TRANSFER_BYTES_QUICK = [1 << 20, 1 << 24]
ROUNDTRIP_SIZES = [256, 1024, 2048]
ROUNDTRIP_SIZES_QUICK = [256, 1024]
