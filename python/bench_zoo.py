"""Times timm's eval forward of one backbone on CPU (the PyTorch side of `cargo xtask bench-zoo`),
or with --train one training step (train-mode forward, cross-entropy, backward, SGD with
Nesterov momentum and weight decay: the reference's optimizer). With --device cuda, on the GPU,
timed to the end of the queued work, with the same arithmetic switches as medxfer's side:
--precision tf32 lets convolutions use TF32 (torch.backends.cudnn.allow_tf32, PyTorch's own
default), --matmul-tf32 matrix products too (torch.backends.cuda.matmul.allow_tf32, off by
default), --conv-algorithms benchmark times cuDNN's algorithms (torch.backends.cudnn.benchmark),
and cuDNN's algorithms are deterministic ones (torch.backends.cudnn.deterministic = True, as
medxfer's default) unless --conv-nondeterministic (PyTorch's own default).

    python bench_zoo.py NAME --batch 32 --repeats 3 [--warmup 2] [--train] [--device cuda]
        [--precision f32|tf32] [--matmul-tf32] [--conv-algorithms heuristic|benchmark]
        [--conv-nondeterministic] [--host-batches] [--vit-config JSON]

NAME is a timm model name; with --vit-config (a registry ViT that is not one, such as the
foundation models: its `[architecture]` as medxfer's VitConfig serialises it) timm's
VisionTransformer is built from that configuration instead, with a 1000-class head to train
(as medxfer's side gives a model published without one) and none for extraction.

Prints one JSON object: median seconds per batch, images/s, every run (and, of each, the time
until the host had queued its work, before the wait for it), peak resident memory,
(on a GPU) peak device memory and, with --train, what the forward pass keeps for the backward pass
and (on a GPU) the most one step holds.
"""

import argparse
import functools
import json
import resource
import statistics
import sys
import time

import timm
import torch
from timm.layers import SwiGLUPacked
from timm.models.vision_transformer import VisionTransformer


def vit_from_config(config, train):
    """timm's VisionTransformer for a medxfer VitConfig (its keyword names are timm's, but for
    the MLP, the LayerNorm's epsilon and the pooling's spelling)."""
    if config.get("attn_pool") or config["embedding"] == "attentional_pool" or config["distilled"]:
        sys.exit("no timm VisionTransformer has this model's pooler or distillation head")
    kwargs = {key: config[key] for key in ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias",
                                            "init_values", "class_token", "reg_tokens", "no_embed_class", "pre_norm", "fc_norm",
                                            "dynamic_img_size")}
    kwargs["global_pool"] = {"token": "token", "avg": "avg", "none": ""}[config["global_pool"]]
    kwargs["norm_layer"] = functools.partial(torch.nn.LayerNorm, eps=config["layer_norm_eps"])
    if config["mlp"] == "swiglu_packed":
        kwargs.update(mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU)
    return VisionTransformer(num_classes=1000 if train else 0, **kwargs)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    parser.add_argument("--train", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["f32", "tf32"], default="f32")
    parser.add_argument("--matmul-tf32", action="store_true")
    parser.add_argument("--conv-algorithms", choices=["heuristic", "benchmark"], default="heuristic")
    parser.add_argument("--conv-nondeterministic", action="store_true")
    parser.add_argument("--host-batches", action="store_true",
                        help="each step's images start on the host, in pinned memory, moved with non_blocking=True")
    parser.add_argument("--vit-config", help="a registry ViT's configuration (JSON), built instead of NAME")
    args = parser.parse_args()
    device = torch.device("cuda" if args.device.startswith("cuda") else "cpu", int(args.device[5:]) if args.device.startswith("cuda:") else None)
    gpu = device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = args.matmul_tf32
    torch.backends.cudnn.allow_tf32 = args.precision == "tf32"
    torch.backends.cudnn.benchmark = args.conv_algorithms == "benchmark"
    torch.backends.cudnn.deterministic = not args.conv_nondeterministic
    if args.vit_config:
        model = vit_from_config(json.loads(args.vit_config), args.train).eval().to(device)
    else:
        model = timm.create_model(args.name, pretrained=False).eval().to(device)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)).to(device)
    # As a DataLoader(pin_memory=True) hands batches over, each moved with non_blocking=True.
    host = x.cpu().pin_memory() if args.host_batches and gpu else (x.cpu() if args.host_batches else None)

    def batch():
        return x if host is None else host.to(device, non_blocking=True)

    def sync():
        if gpu:
            torch.cuda.synchronize(device)
    runs, issue_runs = [], []
    if args.train:
        model.train()
        y = (torch.arange(args.batch) * 37 % 1000).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True, weight_decay=1e-4)

        def step(start):
            """One step; returns when the host had queued all of its work, before the wait."""
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(batch()), y).backward()
            optimizer.step()
            issued = time.perf_counter() - start
            sync()
            return issued

        for _ in range(args.warmup):
            step(time.perf_counter())
        for _ in range(args.repeats):
            start = time.perf_counter()
            issue_runs.append(step(start))
            runs.append(time.perf_counter() - start)
        # The timed steps' peak, read before the measuring step resets it.
        peak_device = torch.cuda.max_memory_allocated(device) if gpu else None
        optimizer.zero_grad()
        graph, step_peak = step_memory(model, optimizer, x, y, device)
    else:
        with torch.inference_mode():
            for _ in range(args.warmup):
                model(batch())
            sync()
            for _ in range(args.repeats):
                start = time.perf_counter()
                model(batch())
                issue_runs.append(time.perf_counter() - start)
                sync()
                runs.append(time.perf_counter() - start)
    seconds = statistics.median(runs)
    print(json.dumps({"seconds": seconds, "images_per_second": args.batch / seconds, "runs": runs,
                      "issue_runs": issue_runs,
                      "graph_bytes": graph if args.train else None,
                      "step_peak_bytes": step_peak if args.train else None,
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "peak_device_bytes": peak_device if args.train else (torch.cuda.max_memory_allocated(device) if gpu else None),
                      "threads": torch.get_num_threads(), "torch": torch.__version__, "timm": timm.__version__}))


def step_memory(model, optimizer, x, y, device):
    """What one more, untimed training step holds above what was held before it: what its
    forward pass keeps for the backward pass, and (on a GPU) the most the whole step held.

    On a GPU the memory allocated after the forward pass less before it, and the step's peak
    allocation less the same. On the CPU, which keeps no count, the storages autograd saves for
    the backward pass (its saved-tensor hooks see each one; each is counted once, the parameters
    and the input not at all) and the logits': PyTorch frees every other intermediate as soon as
    the forward pass has used it. No peak there.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        torch.cuda.synchronize(device)
        graph = torch.cuda.memory_allocated(device) - before
        loss.backward()
        optimizer.step()
        torch.cuda.synchronize(device)
        return graph, torch.cuda.max_memory_allocated(device) - before
    held_before = {p.untyped_storage().data_ptr() for p in model.parameters()}
    held_before.add(x.untyped_storage().data_ptr())
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in held_before:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logits = model(x)
        torch.nn.functional.cross_entropy(logits, y)
    saved[logits.untyped_storage().data_ptr()] = logits.untyped_storage().nbytes()
    return sum(saved.values()), None


if __name__ == "__main__":
    main()
