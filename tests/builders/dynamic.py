"""A tiny fully convolutional detector-like CNN exported to ONNX with dynamic batch, height and width."""
from pathlib import Path

# (out channels, in channels, kernel, stride): MACs at H x W = sum(out * (H/s) * (W/s) * in * k * k)
LAYERS = ((8, 3, 3, 1), (16, 8, 3, 2), (6, 16, 1, 1))


def macs_at(h: int, w: int) -> int:
    """The hand count of multiply-accumulates for one sample of size h x w."""
    total, scale = 0, 1
    for out, inp, k, stride in LAYERS:
        scale *= stride
        total += out * (h // scale) * (w // scale) * inp * k * k
    return total


def export_dynamic_hw(path: Path) -> Path:
    import torch

    torch.manual_seed(0)
    nn = torch.nn
    layers = []
    for out, inp, k, stride in LAYERS:
        layers += [nn.Conv2d(inp, out, k, stride=stride, padding=k // 2), nn.ReLU()]
    model = nn.Sequential(*layers[:-1]).eval()  # the head ends without an activation
    torch.onnx.export(model, (torch.zeros(1, 3, 64, 64),), str(path), input_names=["images"], output_names=["preds"],
                      dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                                    "preds": {0: "batch", 2: "h", 3: "w"}}, dynamo=False, opset_version=17)
    return path


def export_even_only(path: Path) -> Path:
    """A dynamic-size model that runs only at even heights and widths (a stride-2 branch added back after 2x
    upsampling, as in a detector's feature pyramid)."""
    import torch

    class EvenOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.down = torch.nn.Conv2d(3, 3, 3, stride=2, padding=1)

        def forward(self, x):
            return x + torch.nn.functional.interpolate(self.down(x), scale_factor=2.0, mode="nearest")

    torch.onnx.export(EvenOnly().eval(), (torch.zeros(1, 3, 64, 64),), str(path), input_names=["images"],
                      output_names=["out"], dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}},
                      dynamo=False, opset_version=17)
    return path
