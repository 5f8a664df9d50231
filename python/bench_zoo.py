"""Times timm's eval forward of one backbone on CPU (the PyTorch side of `cargo xtask bench-zoo`).

    python bench_zoo.py NAME --batch 32 --repeats 3

Prints one JSON object: median seconds per batch, images/s, every run, peak resident memory.
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
    args = parser.parse_args()
    model = timm.create_model(args.name, pretrained=False).eval()
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    runs = []
    with torch.inference_mode():
        model(x)
        for _ in range(args.repeats):
            start = time.perf_counter()
            model(x)
            runs.append(time.perf_counter() - start)
    seconds = statistics.median(runs)
    print(json.dumps({"seconds": seconds, "images_per_second": args.batch / seconds, "runs": runs,
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "threads": torch.get_num_threads(), "torch": torch.__version__, "timm": timm.__version__}))


if __name__ == "__main__":
    main()
