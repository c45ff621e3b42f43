"""NumCLIP's released `compute_ce_dis_loss`, kept verbatim except for its hard-coded `cuda:0` device.

The baseline users had: a per-sample Python loop that moves the weights through the host. numclip's
faithful mode must equal it (tests) and beat it (benchmarks); nothing else calls it.
"""

import torch


def released_ce_dis_loss(logits: torch.Tensor, y: torch.Tensor, d: int) -> torch.Tensor:
    device = logits.device  # released: 'cuda:0'
    list_target = list(range(d))
    target = torch.Tensor(list_target).to(device)
    target = torch.unsqueeze(target, 1)
    ls_weight = []
    for i in range(len(y)):
        label_inv_ranks = (torch.abs(y[i] - target).transpose(0, 1))
        label_inv_ranks_norm = (torch.abs(y[i] - target).transpose(0, 1)) / torch.sum(label_inv_ranks, dim=1) * (d - 1)
        label_inv_ranks_norm = torch.squeeze(label_inv_ranks_norm, 0)
        label_inv_ranks_norm[y[i]] = 1.0
        ls_label_inv_ranks_norm = label_inv_ranks_norm.detach().cpu().numpy().tolist()
        ls_weight.append(ls_label_inv_ranks_norm)
    weight = torch.Tensor(ls_weight).to(device)
    logits_weight = logits * weight
    return torch.nn.CrossEntropyLoss()(logits_weight, y)
