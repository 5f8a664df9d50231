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
        [--conv-nondeterministic]

Prints one JSON object: median seconds per batch, images/s, every run, peak resident memory and
(on a GPU) peak device memory.
"""

import argparse
import json
import resource
import statistics
import time

import timm
import torch


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
    args = parser.parse_args()
    device = torch.device("cuda" if args.device.startswith("cuda") else "cpu", int(args.device[5:]) if args.device.startswith("cuda:") else None)
    gpu = device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = args.matmul_tf32
    torch.backends.cudnn.allow_tf32 = args.precision == "tf32"
    torch.backends.cudnn.benchmark = args.conv_algorithms == "benchmark"
    torch.backends.cudnn.deterministic = not args.conv_nondeterministic
    model = timm.create_model(args.name, pretrained=False).eval().to(device)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)).to(device)

    def sync():
        if gpu:
            torch.cuda.synchronize(device)
    runs = []
    if args.train:
        model.train()
        y = (torch.arange(args.batch) * 37 % 1000).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True, weight_decay=1e-4)

        def step():
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            sync()

        for _ in range(args.warmup):
            step()
        for _ in range(args.repeats):
            start = time.perf_counter()
            step()
            runs.append(time.perf_counter() - start)
    else:
        with torch.inference_mode():
            for _ in range(args.warmup):
                model(x)
            sync()
            for _ in range(args.repeats):
                start = time.perf_counter()
                model(x)
                sync()
                runs.append(time.perf_counter() - start)
    seconds = statistics.median(runs)
    print(json.dumps({"seconds": seconds, "images_per_second": args.batch / seconds, "runs": runs,
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "peak_device_bytes": torch.cuda.max_memory_allocated(device) if gpu else None,
                      "threads": torch.get_num_threads(), "torch": torch.__version__, "timm": timm.__version__}))


if __name__ == "__main__":
    main()
