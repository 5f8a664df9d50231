"""The PIL + torchvision side of `cargo xtask bench-data`: the reference's own input pipeline.

    python bench_data.py DIR --workers 2 --batch 128

On the JPEGs in DIR, with a torch DataLoader of WORKERS processes (the reference's loader reads
`PIL.Image.open(p).convert("RGB")` every epoch): decode + Resize(256) alone, then the eval
pipeline (Resize(256), CenterCrop(224), ToTensor, Normalize) and the train pipeline (flips,
RandomResizedCrop(224, (0.75, 1)), RandomRotation(45), ColorJitter(hue=0.2), ToTensor,
Normalize), each timed over one pass. Prints one JSON object of images/s.
"""

import argparse
import json
import os
import time

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

NORMALIZE = transforms.Normalize((0.485, 0.456, 0.406), (0.228, 0.224, 0.225))
PIPELINES = {
    "decode_resize": transforms.Compose([transforms.Resize(256), transforms.PILToTensor()]),
    "eval": transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), NORMALIZE]),
    "train": transforms.Compose([
        transforms.RandomHorizontalFlip(),
        transforms.RandomVerticalFlip(),
        transforms.RandomResizedCrop(224, scale=(0.75, 1.0)),
        transforms.RandomRotation(45),
        transforms.ColorJitter(hue=0.2),
        transforms.ToTensor(),
        NORMALIZE,
    ]),
}


class Files(Dataset):
    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.transform(Image.open(self.paths[i]).convert("RGB")), 0


def collate(batch):
    # decode_resize yields images of different widths: keep them as a list.
    return [item[0] for item in batch]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("dir")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)
    paths = sorted(os.path.join(args.dir, f) for f in os.listdir(args.dir) if f.endswith(".jpg"))
    result = {}
    for name, pipeline in PIPELINES.items():
        loader = DataLoader(Files(paths, pipeline), batch_size=args.batch, num_workers=args.workers,
                            collate_fn=collate if name == "decode_resize" else None, persistent_workers=False)
        start = time.perf_counter()
        count = sum(len(batch) if name == "decode_resize" else batch[0].shape[0] for batch in loader)
        result[name] = count / (time.perf_counter() - start)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
