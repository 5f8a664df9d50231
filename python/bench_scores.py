"""Times the reference implementations (reference_scores.py) on one feature file.

    python bench_scores.py FILE.safetensors --repeats 3

Prints one JSON object: per metric the median seconds over the repeats, every run's seconds and
the value; the peak resident memory of this process; the BLAS in use. `cargo xtask bench-scores`
runs it with the same thread count as the Rust side.
"""

import argparse
import json
import resource
import statistics
import time

import numpy as np
from safetensors.numpy import load_file
from threadpoolctl import threadpool_info

import reference_scores as ref


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("file")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = load_file(args.file)
    features, labels, probs = data["features"], data["labels"].astype(np.int64), data["probs"]
    out = {"metrics": {}}
    # NCTI and ETran are defined over a set of models; their per-model terms are what one model
    # costs (the values reported: NCTI's seli, ETran's LDA term).
    set_terms = {
        "ncti_terms": lambda f, y, p: ref.ncti_components(f, y)[0],
        "etran_terms": lambda f, y, p: (ref.etran_energy(f), ref.etran_lda(f, y))[1],
    }
    for name, fn in (ref.SCORES | ref.BEYOND | set_terms).items():
        runs = []
        value = None
        for _ in range(args.repeats):
            start = time.perf_counter()
            value = fn(features, labels, probs)
            runs.append(time.perf_counter() - start)
        out["metrics"][name] = {"seconds": statistics.median(runs), "runs": runs, "value": value}
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out["blas"] = [{k: info.get(k) for k in ("internal_api", "architecture", "num_threads", "version")} for info in threadpool_info()]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
