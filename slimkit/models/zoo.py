"""The built-in model zoo, registered with slimkit as a built-in plugin (see :mod:`slimkit.plugins`)."""
from __future__ import annotations

from slimkit import hookimpl
from slimkit.models import lenet, mobilenet, resnet, vgg, vit

# name -> (factory, one-line summary)
MODELS = {
    "lenet300": (lenet.lenet300, "LeNet-300-100 MLP (LeCun et al. 1998), the classic pruning baseline; option width"),
    "lenet5": (lenet.lenet5, "LeNet-5 convnet (LeCun et al. 1998), padded for 8x8 inputs; option width"),
    "vgg11": (vgg.vgg11, "VGG-11 (Simonyan & Zisserman 2015, cfg A) with BatchNorm, CIFAR-style; "
                         "options width, batch_norm, classifier"),
    "vgg13": (vgg.vgg13, "VGG-13 (Simonyan & Zisserman 2015, cfg B) with BatchNorm, CIFAR-style; "
                         "options width, batch_norm, classifier"),
    "vgg16": (vgg.vgg16, "VGG-16 (Simonyan & Zisserman 2015, cfg D) with BatchNorm, CIFAR-style; "
                         "options width, batch_norm, classifier"),
    "vgg19": (vgg.vgg19, "VGG-19 (Simonyan & Zisserman 2015, cfg E) with BatchNorm, CIFAR-style; "
                         "options width, batch_norm, classifier"),
    "minivgg": (vgg.minivgg, "Reduced VGG-13 (32-256 channels) of Deep Net Triage (Nowak & Corso 2018); "
                             "options width, batch_norm, classifier"),
    "resnet20": (resnet.resnet20, "ResNet-20 for CIFAR (He et al. 2016), projection shortcuts; option width"),
    "resnet56": (resnet.resnet56, "ResNet-56 for CIFAR (He et al. 2016), projection shortcuts; option width"),
    "resnet18": (resnet.resnet18, "ResNet-18 (He et al. 2016) with a CIFAR stem (3x3 conv, no max pool); option width"),
    "mobilenetv2": (mobilenet.mobilenetv2, "MobileNetV2 (Sandler et al. 2018), stride-1 stem for small images; "
                                           "options width, dropout"),
    "vit": (vit.vit, "Small vision transformer (Dosovitskiy et al. 2021): patch embedding, class token, pre-norm "
                     "blocks with multi-head self-attention; options dim, depth, heads, patch, mlp_ratio"),
}

# Every custom module class the zoo's models contain.
MODULES = (lenet.LeNet300, lenet.LeNet5, vgg.VGG, resnet.BasicBlock, resnet.ResNet, mobilenet.InvertedResidual,
           mobilenet.MobileNetV2, vit.LayerNorm, vit.Attention, vit.Block, vit.ViT)


@hookimpl
def register_models(register):
    for name, (factory, summary) in MODELS.items():
        register(name, factory, summary)


@hookimpl
def register_modules(register):
    for cls in MODULES:
        register(cls)
