"""Independent TTT-MLP reference: a plain token-by-token loop written from Sun et al.'s equations,
with the inner-loop gradients taken by autograd (the implementation uses closed forms and a
lower-triangular dual form). Reads only the branch's parameters."""
from __future__ import annotations

import math

import torch


def _ln(v, gamma, beta, eps=1e-6):
    mu = v.mean()
    var = ((v - mu) ** 2).mean()
    return gamma * (v - mu) / torch.sqrt(var + eps) + beta


def _mlp(u, W1, b1, W2, b2):
    h = u @ W1 + b1
    h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
    return h @ W2 + b2


def reference_branch(branch, x: torch.Tensor, mini_batch: int, lr: float, alpha=None):
    """x [B, T, d] → x + tanh(α)·ttt(x), one row, one head and one token at a time."""
    p = {n: t.detach().double() for n, t in branch.state_dict().items()}
    B, T, d = x.shape
    H = p["W1"].shape[0]
    hd = d // H
    x = x.double()
    alpha = p["gating_alpha"] if alpha is None else torch.full((d,), float(alpha), dtype=torch.float64)
    out = torch.empty(B, T, d, dtype=torch.float64)
    for b in range(B):
        heads_out = torch.empty(T, H, hd, dtype=torch.float64)
        for h in range(H):
            rows = slice(h * hd, (h + 1) * hd)
            gamma, beta = p["ttt_norm_weight"][h], p["ttt_norm_bias"][h]
            W = [p["W1"][h], p["b1"][h, 0], p["W2"][h], p["b2"][h, 0]]
            grads_so_far = None
            for t in range(T):
                if t % mini_batch == 0:  # new mini-batch: start from the weights after the last
                    if grads_so_far is not None:
                        W = [w - g for w, g in zip(W, grads_so_far)]
                    grads_so_far = [torch.zeros_like(w) for w in W]
                xt = x[b, t]
                q = xt @ p["wq.weight"][rows].T + p["wq.bias"][rows]
                k = xt @ p["wk.weight"][rows].T + p["wk.bias"][rows]
                v = xt @ p["wv.weight"][rows].T + p["wv.bias"][rows]
                q, k = q / q.norm(), k / k.norm()
                diff = v - k
                target = gamma * (diff - diff.mean()) / (diff.std() + 1e-5) + beta
                eta = torch.sigmoid(xt @ p["learnable_ttt_lr_weight"][h, 0]
                                    + p["learnable_ttt_lr_bias"][h, 0]) * lr / (mini_batch * hd)
                params = [w.clone().requires_grad_(True) for w in W]
                loss = 0.5 * ((_ln(_mlp(k, *params), gamma, beta) - target) ** 2).sum()
                g = torch.autograd.grad(loss, params)
                grads_so_far = [acc + eta * gi for acc, gi in zip(grads_so_far, g)]
                Wt = [w - acc for w, acc in zip(W, grads_so_far)]
                heads_out[t, h] = q + _ln(_mlp(q, *Wt), gamma, beta)
        flat = heads_out.reshape(T, d)
        mu = flat.mean(-1, keepdim=True)
        var = ((flat - mu) ** 2).mean(-1, keepdim=True)
        normed = (flat - mu) / torch.sqrt(var + 1e-6) * p["post_norm.weight"] + p["post_norm.bias"]
        ttt = normed @ p["wo.weight"].T + p["wo.bias"]
        out[b] = x[b] + torch.tanh(alpha) * ttt
    return out
