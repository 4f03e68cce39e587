"""Small test models for the channel dependency graph, one per pattern that structured
pruning must follow (tests/test_depgraph*.py). Each takes an input of ``INPUT`` shape
(without batch) and returns logits; ``CORPUS`` maps a name to ``(factory, input shape)``."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def cbr(cin, cout, k=3, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


class Head(nn.Module):
    def __init__(self, c, classes=5):
        super().__init__()
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(c, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(x), 1))


class SelfConcat(nn.Module):
    """cat([x, x]) feeding a conv (Torch-Pruning #146/#481)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = cbr(3, 6), cbr(12, 8), Head(8)

    def forward(self, x):
        x = self.a(x)
        return self.head(self.b(torch.cat([x, x], dim=1)))


class ConcatBranches(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.b1, self.b2, self.b3 = cbr(3, 8), cbr(8, 4, 1), cbr(8, 6), cbr(8, 5)
        self.mix, self.head = cbr(15, 8), Head(8)

    def forward(self, x):
        x = self.stem(x)
        y = torch.cat((self.b1(x), self.b2(x), self.b3(x)), 1)
        return self.head(self.mix(y) + x)


class ChunkGate(nn.Module):
    """chunk(2) into a gated linear unit, then split by fixed sizes."""

    def __init__(self):
        super().__init__()
        self.stem, self.c1, self.c2, self.c3 = cbr(3, 8), nn.Conv2d(8, 12, 3, padding=1), cbr(6, 8), cbr(4, 6)
        self.head = Head(10)

    def forward(self, x):
        a, b = self.c1(self.stem(x)).chunk(2, dim=1)
        y = self.c2(a * torch.sigmoid(b))
        p, q = torch.split(y, [4, 4], dim=1)
        return self.head(torch.cat([p * 2, self.c3(q)], 1))


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.body = cbr(3, 8), cbr(8, 12)
        self.fc1, self.fc2 = nn.Linear(12, 4), nn.Linear(4, 12)
        self.out, self.head = cbr(12, 8), Head(8)

    def forward(self, x):
        y = self.body(self.stem(x))
        s = y.mean((2, 3))
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return self.head(self.out(y * gate.view(gate.size(0), -1, 1, 1)))


class ProjectionShortcut(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.c1 = cbr(3, 6), cbr(6, 10)
        self.c2 = nn.Sequential(nn.Conv2d(10, 10, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(10))
        self.proj = nn.Sequential(nn.Conv2d(6, 10, 1, stride=2, bias=False), nn.BatchNorm2d(10))
        self.head = Head(10)

    def forward(self, x):
        x = self.stem(x)
        return self.head(F.relu(self.c2(self.c1(x)) + self.proj(x)))


class IdentityShortcut(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.c1 = cbr(3, 8), cbr(8, 6)
        self.c2 = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.head = Head(8)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.c2(self.c1(x)))
        x = x - self.c2(self.c1(x)) * 0.5  # the same block again (shared layers), a subtraction
        return self.head(x)


class NestedResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.f, self.g, self.h = cbr(3, 8), cbr(8, 8), cbr(8, 8), cbr(8, 8)
        self.head = Head(8)

    def forward(self, x):
        x = self.stem(x)
        y = x + self.f(x)
        z = y + self.g(y + self.h(y))
        return self.head(z + x)


class DepthwiseSeparable(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.dw, self.pw = cbr(3, 8), cbr(8, 8, groups=8), cbr(8, 12, 1)
        self.dw2 = cbr(12, 24, groups=12)  # depth multiplier 2
        self.head = Head(24)

    def forward(self, x):
        return self.head(self.dw2(self.pw(self.dw(self.stem(x)))))


class GroupedConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.g1, self.g2 = cbr(3, 16), cbr(16, 8, groups=4), cbr(8, 12, groups=2)
        self.gn = nn.GroupNorm(4, 12)
        self.head = Head(12)

    def forward(self, x):
        return self.head(self.gn(self.g2(self.g1(self.stem(x)))))


class InvertedResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 8)
        self.expand, self.dw = cbr(8, 24, 1), cbr(24, 24, groups=24)
        self.project = nn.Sequential(nn.Conv2d(24, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.head = Head(8)

    def forward(self, x):
        x = self.stem(x)
        return self.head(x + self.project(self.dw(self.expand(x))))


class Attention(nn.Module):
    """Pre-norm transformer block; heads derived from the projection width."""

    def __init__(self, dim=16, head_dim=4, hidden=24):
        super().__init__()
        self.head_dim = head_dim
        self.embed = nn.Linear(12, dim)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.fc = nn.Linear(dim, 5)

    def forward(self, x):  # x: (B, 3, 4, 4) seen as 4 tokens of 12 features
        b = x.shape[0]
        t = self.embed(x.reshape(b, 3, 4, 4).permute(0, 2, 1, 3).reshape(b, 4, 12))
        t = torch.cat([self.cls.expand(b, -1, -1), t], dim=1)
        h = self.norm1(t)
        n = h.shape[1]
        q = self.q(h).view(b, n, -1, self.head_dim).transpose(1, 2)  # the head count follows the width
        k = self.k(h).view(b, n, -1, self.head_dim).transpose(1, 2)
        v = self.v(h).view(b, n, -1, self.head_dim).transpose(1, 2)
        att = (q @ k.transpose(-2, -1) * self.head_dim ** -0.5).softmax(dim=-1)
        t = t + self.o((att @ v).transpose(1, 2).reshape(b, n, -1))
        t = t + self.fc2(F.gelu(self.fc1(self.norm2(t))))
        return self.fc(t[:, 0])


class FlattenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = cbr(3, 6), cbr(6, 5)
        self.fc1, self.fc2 = nn.Linear(5 * 4 * 4, 12), nn.Linear(12, 5)

    def forward(self, x):
        x = F.max_pool2d(self.c2(self.c1(x)), 2)
        return self.fc2(F.relu(self.fc1(x.view(x.size(0), -1))))


class SharedConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.shared = cbr(3, 8), nn.Conv2d(8, 8, 3, padding=1)
        self.alias = self.shared  # the same layer under a second name
        self.head = Head(8)

    def forward(self, x):
        x = self.stem(x)
        return self.head(self.alias(F.relu(self.shared(x))) + x)


class MLPBatchNorm1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.1),
                                 nn.Linear(32, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 5))

    def forward(self, x):
        return self.net(x)


class ChannelShuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.g1, self.g2 = cbr(3, 12), cbr(12, 12, groups=3), cbr(12, 12)
        self.head = Head(12)

    def forward(self, x):
        x = self.g1(self.stem(x))
        b, c, h, w = x.shape
        x = x.view(b, 3, -1, h, w).transpose(1, 2).reshape(b, c, h, w)  # 3 groups, written in
        return self.head(self.g2(x))


class FunctionalParams(nn.Module):
    """Weights used directly (F.linear with parameters, a per-channel scale)."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 8)
        self.scale = nn.Parameter(torch.rand(8) + 0.5)
        self.w1, self.b1 = nn.Parameter(torch.randn(10, 8) * 0.3), nn.Parameter(torch.randn(10))
        self.w2 = nn.Parameter(torch.randn(5, 10) * 0.3)

    def forward(self, x):
        x = self.stem(x) * self.scale[None, :, None, None]
        h = F.relu(F.linear(x.mean((2, 3)), self.w1, self.b1))
        return h @ self.w2.t()


class MulBranches(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.a, self.b, self.c = cbr(3, 8), cbr(8, 6), nn.Conv2d(8, 6, 1), cbr(6, 6)
        self.head = Head(6)

    def forward(self, x):
        x = self.stem(x)
        y = self.a(x) * torch.tanh(self.b(x))
        return self.head(self.c(y) + F.interpolate(y, scale_factor=1.0))


CORPUS = {
    "self_concat": (SelfConcat, (3, 8, 8)),
    "concat_branches": (ConcatBranches, (3, 8, 8)),
    "chunk_gate": (ChunkGate, (3, 8, 8)),
    "squeeze_excite": (SqueezeExcite, (3, 8, 8)),
    "projection_shortcut": (ProjectionShortcut, (3, 8, 8)),
    "identity_shortcut": (IdentityShortcut, (3, 8, 8)),
    "nested_residual": (NestedResidual, (3, 8, 8)),
    "depthwise_separable": (DepthwiseSeparable, (3, 8, 8)),
    "grouped_conv": (GroupedConv, (3, 8, 8)),
    "inverted_residual": (InvertedResidual, (3, 8, 8)),
    "attention": (Attention, (3, 4, 4)),
    "flatten_linear": (FlattenLinear, (3, 8, 8)),
    "shared_conv": (SharedConv, (3, 8, 8)),
    "mlp_batchnorm1d": (MLPBatchNorm1d, (3, 4, 4)),
    "channel_shuffle": (ChannelShuffle, (3, 8, 8)),
    "functional_params": (FunctionalParams, (3, 8, 8)),
    "mul_branches": (MulBranches, (3, 8, 8)),
}
