"""The data sets slimkit ships with, registered as a built-in plugin.

None of them downloads anything: ``digits`` ships inside scikit-learn, ``synthetic``
is generated, and the others read files the user already has.
"""
from __future__ import annotations

from slimkit import hookimpl
from slimkit.errors import UserError


def digits(argument, seed):
    from slimkit.data.digits import load_digits

    return load_digits(argument, seed)


def mnist(argument, seed):
    from slimkit.data.idx import EXPECTED, load_idx_dir

    if not argument:
        raise UserError(f"mnist needs a directory: --data mnist:DIR with {EXPECTED}")
    return load_idx_dir(argument, seed)


def cifar10(argument, seed):
    from slimkit.data.cifar import load_cifar

    return load_cifar("cifar10", argument, seed)


def cifar100(argument, seed):
    from slimkit.data.cifar import load_cifar

    return load_cifar("cifar100", argument, seed)


def folder(argument, seed):
    from slimkit.data.folder import load_folder

    return load_folder(argument, seed)


def synthetic(argument, seed):
    from slimkit.data.synthetic import load_synthetic

    return load_synthetic(argument, seed)


@hookimpl
def register_datasets(register):
    register("digits", digits, "scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), split 80/20; the default")
    register("mnist", mnist, "MNIST-format IDX files (MNIST, Fashion-MNIST, KMNIST, ...): mnist:DIR or mnist:DIR@K "
             "(K classes), .gz or raw")
    register("cifar10", cifar10, "CIFAR-10, binary or python batches: cifar10:DIR")
    register("cifar100", cifar100, "CIFAR-100 (fine labels), binary or python batches: cifar100:DIR")
    register("folder", folder, "class-per-folder images (PNG/JPEG/...): folder:DIR or folder:DIR@SIZE (default 32)")
    register("synthetic", synthetic, "seeded prototypes + noise for tests: synthetic or synthetic:NxCxHxW[@K] / NxF[@K]")
