"""Random unstructured pruning: remove a random fraction of each layer's weights.

Pruning papers compare magnitude pruning against random pruning at the same
sparsity (e.g. Han et al., "Learning both Weights and Connections", 2015); this is
that control, as a slimkit method in a package of its own.
"""
import torch

from slimkit import hookimpl
from slimkit.api import Method, Option
from slimkit.nn import prunable_layers, to_masked


class RandomPrune(Method):
    name = "random-prune"
    summary = "Prune a random fraction of every layer's weights, then fine-tune (a control)."
    paper = "Han et al., Learning both Weights and Connections for Efficient Neural Networks, NeurIPS 2015 (control)"
    options = [
        Option("sparsity", float, 0.5, "fraction of weights removed per layer", min=0.0, max=0.99),
    ]

    def apply(self, model, ctx, opts):
        model = to_masked(model)
        generator = torch.Generator().manual_seed(ctx.seed)  # the same masks on every rank
        for _, layer in prunable_layers(model):
            n = layer.weight.numel()
            k = round(opts["sparsity"] * n)
            order = torch.randperm(n, generator=generator)
            mask = torch.ones(n)
            mask[order[:k]] = 0
            layer.set_mask(mask.view_as(layer.weight).to(layer.weight.device))
        ctx.train(model, epochs=opts["epochs"], lr=opts["lr"])  # the engine's common options
        return model


@hookimpl
def register_methods(register):
    register(RandomPrune())
