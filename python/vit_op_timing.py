"""Times the ops of a ViT-L/16 eval forward pass one by one at its shapes (batch 8, 197 tokens,
width 1024, 16 heads) as timm calls them in PyTorch: the counterpart of
`cargo bench -p medxfer-kernels --bench vit_op_timing`, which prints the same rows.

    python vit_op_timing.py
"""

import time

import torch
import torch.nn.functional as F

IMAGES, TOKENS, WIDTH, HEADS = 8, 197, 1024, 16


def best_of_five(calls, run):
    """The fastest of five runs after one warm-up, divided by the calls each run makes (s)."""
    run()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        run()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def main():
    torch.manual_seed(0)
    rows = IMAGES * TOKENS
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with torch.inference_mode():
        for name, inputs, outputs, epilogue in [
            ("qkv 1024->3072", WIDTH, 3 * WIDTH, None),
            ("proj 1024->1024", WIDTH, WIDTH, None),
            ("proj+residual", WIDTH, WIDTH, "residual"),
            ("fc1 1024->4096", WIDTH, 4 * WIDTH, None),
            ("fc1+gelu 1024->4096", WIDTH, 4 * WIDTH, "gelu"),
            ("fc2 4096->1024", 4 * WIDTH, WIDTH, None),
            ("fc2+residual", 4 * WIDTH, WIDTH, "residual"),
        ]:
            x = torch.randn(IMAGES, TOKENS, inputs)
            weights = [torch.randn(outputs, inputs) * 0.02 for _ in range(8)]
            bias = torch.randn(outputs) * 0.02
            residual = torch.randn(IMAGES, TOKENS, outputs)

            def run():
                for w in weights:
                    y = F.linear(x, w, bias)
                    if epilogue == "gelu":
                        y = F.gelu(y)
                    elif epilogue == "residual":
                        y = residual + y

            per_call = best_of_five(len(weights), run)
            gflop = 2 * rows * inputs * outputs / 1e9
            print(f"{name:<22} {per_call * 1e3:7.2f} ms {gflop / per_call:6.1f} GFLOP/s")

        qkv = torch.randn(IMAGES, TOKENS, 3 * WIDTH)

        def attention():
            # timm's Attention.forward after the qkv projection.
            q, k, v = qkv.reshape(IMAGES, TOKENS, 3, HEADS, WIDTH // HEADS).permute(2, 0, 3, 1, 4).unbind(0)
            out = F.scaled_dot_product_attention(q, k, v)
            out.transpose(1, 2).reshape(IMAGES, TOKENS, WIDTH)

        per_call = best_of_five(1, attention)
        gflop = 4 * IMAGES * HEADS * TOKENS * TOKENS * (WIDTH // HEADS) / 1e9
        print(f"{'attention 16 heads':<22} {per_call * 1e3:7.2f} ms {gflop / per_call:6.1f} GFLOP/s")
        x = torch.randn(IMAGES, TOKENS, WIDTH)
        gamma, beta = 1 + 0.1 * torch.randn(WIDTH), 0.1 * torch.randn(WIDTH)
        per_call = best_of_five(1, lambda: F.layer_norm(x, (WIDTH,), gamma, beta, 1e-6))
        print(f"{'layer norm':<22} {per_call * 1e3:7.2f} ms")
        other = torch.randn(IMAGES, TOKENS, WIDTH)
        per_call = best_of_five(1, lambda: x + other)
        print(f"{'residual add':<22} {per_call * 1e3:7.2f} ms")
        hidden = torch.randn(IMAGES, TOKENS, 4 * WIDTH)
        per_call = best_of_five(1, lambda: F.gelu(hidden))
        print(f"{'gelu 4096 wide':<22} {per_call * 1e3:7.2f} ms")


if __name__ == "__main__":
    main()
