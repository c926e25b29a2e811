"""Every code example of the seed spec's Parameter / Module / container sections, run twice: as
written (with torch) and with `torch` replaced by `tracefuse`; what they print must agree once
torch's names are spelled tracefuse's.

Examples that print nothing get a final `print` of the model they build (noted per example), so
that each run shows something to compare. Values drawn from the random generators differ between
the two libraries, so the added prints show structure (reprs, shapes), never random values.
"""
import contextlib
import io
import textwrap

import pytest

# (name, source) — the seed's code verbatim, plus the setup or final print noted in comments.
EXAMPLES = {
    "module_class": """
        import torch.nn as nn
        import torch.nn.functional as F

        class Model(nn.Module):
            def __init__(self):
                super(Model, self).__init__()
                self.conv1 = nn.Conv2d(1, 20, 5)# submodule: Conv2d
                self.conv2 = nn.Conv2d(20, 20, 5)

            def forward(self, x):
               x = F.relu(self.conv1(x))
               return F.relu(self.conv2(x))
        # added: show the model and the shape of one forward call
        print(Model())
        print(Model()(torch.randn(1, 1, 12, 12)).shape)
        """,
    "add_module": """
        import torch.nn as nn
        class Model(nn.Module):
            def __init__(self):
                super(Model, self).__init__()
                self.add_module("conv", nn.Conv2d(10, 20, 4))
                #self.conv = nn.Conv2d(10, 20, 4) 和上面这个增加module的方式等价
        model = Model()
        print(model.conv)
        """,
    "children": """
        import torch.nn as nn
        class Model(nn.Module):
            def __init__(self):
                super(Model, self).__init__()
                self.add_module("conv", nn.Conv2d(10, 20, 4))
                self.add_module("conv1", nn.Conv2d(20 ,10, 4))
        model = Model()

        for sub_module in model.children():
            print(sub_module)
        """,
    "modules": """
        import torch.nn as nn
        class Model(nn.Module):
            def __init__(self):
                super(Model, self).__init__()
                self.add_module("conv", nn.Conv2d(10, 20, 4))
                self.add_module("conv1", nn.Conv2d(20 ,10, 4))
        model = Model()

        for module in model.modules():
            print(module)
        """,
    "modules_shared": """
        import torch.nn as nn

        class Model(nn.Module):
            def __init__(self):
                super(Model, self).__init__()
                submodule = nn.Conv2d(10, 20, 4)
                self.add_module("conv", submodule)
                self.add_module("conv1", submodule)
        model = Model()

        for module in model.modules():
            print(module)
        """,
    "named_children": """
        # added setup: a model that has children named conv4 and conv5
        import torch.nn as nn
        from collections import OrderedDict
        model = nn.Sequential(OrderedDict([("conv%d" % i, nn.Conv2d(i, i + 1, 3)) for i in range(1, 6)]))

        for name, module in model.named_children():
            if name in ['conv4', 'conv5']:
                print(module)
        """,
    "parameters": """
        # added setup: the first example's model
        import torch.nn as nn
        class Model(nn.Module):
            def __init__(self):
                super(Model, self).__init__()
                self.conv1 = nn.Conv2d(1, 20, 5)
                self.conv2 = nn.Conv2d(20, 20, 5)
        model = Model()

        for param in model.parameters():
            print(type(param.data), param.size())
        """,
    "register_buffer": """
        # added setup: the snippet's two lines inside a module's __init__, and a print
        import torch
        import torch.nn as nn
        class Norm(nn.Module):
            def __init__(self, num_features):
                super(Norm, self).__init__()
                self.register_buffer('running_mean', torch.zeros(num_features))

                self.running_mean
        norm = Norm(3)
        print(norm.running_mean, list(norm.state_dict()))
        """,
    "state_dict": """
        import torch
        from torch.autograd import Variable
        import torch.nn as nn

        class Model(nn.Module):
            def __init__(self):
                super(Model, self).__init__()
                self.conv2 = nn.Linear(1, 2)
                self.vari = Variable(torch.rand([1]))
                self.par = nn.Parameter(torch.rand([1]))
                self.register_buffer("buffer", torch.randn([2,3]))

        model = Model()
        print(model.state_dict().keys())
        """,
    "sequential": """
        # added setup: the imports the snippet relies on
        import torch.nn as nn
        from collections import OrderedDict
        # Example of using Sequential

        model = nn.Sequential(
                  nn.Conv2d(1,20,5),
                  nn.ReLU(),
                  nn.Conv2d(20,64,5),
                  nn.ReLU()
                )
        print(model)  # added
        # Example of using Sequential with OrderedDict
        model = nn.Sequential(OrderedDict([
                  ('conv1', nn.Conv2d(1,20,5)),
                  ('relu1', nn.ReLU()),
                  ('conv2', nn.Conv2d(20,64,5)),
                  ('relu2', nn.ReLU())
                ]))
        print(model)  # added
        print(model(torch.randn(2, 1, 12, 12)).shape)  # added
        """,
    "module_list": """
        import torch.nn as nn  # added
        class MyModule(nn.Module):
            def __init__(self):
                super(MyModule, self).__init__()
                self.linears = nn.ModuleList([nn.Linear(10, 10) for i in range(10)])

            def forward(self, x):
                # ModuleList can act as an iterable, or be indexed using ints
                for i, l in enumerate(self.linears):
                    x = self.linears[i // 2](x) + l(x)
                return x
        # added: show the model and the shape of one forward call
        model = MyModule()
        print(model)
        print(model(torch.randn(3, 10)).shape)
        """,
    "parameter_list": """
        import torch.nn as nn  # added
        class MyModule(nn.Module):
            def __init__(self):
                super(MyModule, self).__init__()
                self.params = nn.ParameterList([nn.Parameter(torch.randn(10, 10)) for i in range(10)])

            def forward(self, x):
                # ModuleList can act as an iterable, or be indexed using ints
                for i, p in enumerate(self.params):
                    x = self.params[i // 2].mm(x) + p.mm(x)
                return x
        # added: show the model and the shape of one forward call
        model = MyModule()
        print(model)
        print(model(torch.randn(10, 4)).shape)
        """,
}


def printed(source: str, lib_name: str) -> str:
    """What `source` prints when `torch` in it (and in its namespace) is `lib_name`."""
    import importlib

    code = textwrap.dedent(source)
    if lib_name != "torch":
        code = code.replace("torch", lib_name)
    namespace = {"__name__": f"seed_example_{lib_name}", lib_name: importlib.import_module(lib_name)}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"<seed example ({lib_name})>", "exec"), namespace)
    return out.getvalue()


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_seed_example_prints_what_torch_prints(name):
    ours = printed(EXAMPLES[name], "tracefuse")
    theirs = printed(EXAMPLES[name], "torch").replace("torch", "tracefuse")
    assert ours == theirs
    assert ours.strip()  # every example shows something


def test_seed_outputs_that_are_still_current():
    """The seed's printed outputs that today's PyTorch still prints word for word."""
    assert printed(EXAMPLES["add_module"], "tracefuse") == "Conv2d(10, 20, kernel_size=(4, 4), stride=(1, 1))\n"
    assert printed(EXAMPLES["children"], "tracefuse") == (
        "Conv2d(10, 20, kernel_size=(4, 4), stride=(1, 1))\nConv2d(20, 10, kernel_size=(4, 4), stride=(1, 1))\n")
    assert printed(EXAMPLES["state_dict"], "tracefuse") == (
        "odict_keys(['par', 'buffer', 'conv2.weight', 'conv2.bias'])\n")
    # The seed's "Model (" is the old spelling; PyTorch now prints "Model(".
    assert printed(EXAMPLES["modules_shared"], "tracefuse") == (
        "Model(\n  (conv): Conv2d(10, 20, kernel_size=(4, 4), stride=(1, 1))\n"
        "  (conv1): Conv2d(10, 20, kernel_size=(4, 4), stride=(1, 1))\n)\n"
        "Conv2d(10, 20, kernel_size=(4, 4), stride=(1, 1))\n")
