"""Plain-PyTorch reference models, written from the released code, for the tests and bench.

Not part of the installed package (the runtime never imports torch). Import
as ``from tests.torch_models import resnet`` with the repository root on
``sys.path`` (pytest run from the root, or a ``sys.path`` insert in bench/).
"""
