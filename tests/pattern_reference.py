"""Pattern mass computed the slow way, one query at a time: the reference for dwatt.attention_patterns and for the
heads the scripts choose with `--attention_guidance_heads suggest:…`."""

import torch


def reference_mass(attentions, attention_mask) -> torch.Tensor:
    """Mean attention on the pattern's key over the real queries that have a real such key, one query at a time."""
    mask = attention_mask.tolist()
    num_layers, num_heads = len(attentions), attentions[0].shape[1]
    mass = torch.zeros(num_layers, num_heads, 4, dtype=torch.float64)
    for layer, probabilities in enumerate(attentions):
        for head in range(num_heads):
            for pattern in range(4):
                values = []
                for row, row_mask in enumerate(mask):
                    real = [t for t, m in enumerate(row_mask) if m]
                    for i in real:
                        key = {0: i, 1: i + 1, 2: i - 1, 3: real[0]}[pattern]
                        if key in real:
                            values.append(float(probabilities[row, head, i, key]))
                mass[layer, head, pattern] = sum(values) / len(values)
    return mass
