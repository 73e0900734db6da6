"""Oracle evaluators with labels: a linear probe and a weighted k-NN on frozen features.

The only place labels are used. Both are pure functions over feature tensors (N, D) and
integer labels (N,), scored as top-1 accuracy in [0, 1] on the test features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["knn_accuracy", "linear_probe_accuracy"]


@torch.no_grad()
def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> float:
    """Weighted k-NN accuracy (Wu et al. 2018, as used by DINO and CARP).

    Cosine similarity to the training features; each of the ``k`` nearest neighbours votes for
    its class with weight exp(sim / T).
    """
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    labels = train_labels.to(train.device)
    k = min(k, len(train))
    correct = 0
    for start in range(0, len(test), chunk_size):
        similarity = test[start : start + chunk_size] @ train.T
        top_sim, top_idx = similarity.topk(k, dim=1)
        votes = torch.zeros(len(top_sim), num_classes, device=train.device)
        votes.scatter_add_(1, labels[top_idx], (top_sim / temperature).exp())
        predicted = votes.argmax(dim=1).cpu()
        correct += int((predicted == test_labels[start : start + chunk_size].cpu()).sum())
    return correct / len(test)


def linear_probe_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 0.1,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> float:
    """Linear-probe accuracy: a softmax classifier on standardised frozen features.

    SGD with Nesterov momentum 0.9 and a cosine learning-rate schedule, the protocol of the
    RankMe/VICReg evaluations restricted to precomputed features (no augmentation).
    """
    generator = torch.Generator().manual_seed(seed)
    device = train_features.device
    mean = train_features.float().mean(dim=0, keepdim=True)
    std = train_features.float().std(dim=0, keepdim=True).clamp_min(1e-6)
    train = (train_features.float() - mean) / std
    test = (test_features.float() - mean) / std
    labels = train_labels.to(device)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    classifier = torch.nn.Linear(train.shape[1], num_classes).to(device)
    optimizer = torch.optim.SGD(classifier.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    steps_per_epoch = -(-len(train) // batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    for _ in range(epochs):
        order = torch.randperm(len(train), generator=generator).to(device)
        for start in range(0, len(train), batch_size):
            batch = order[start : start + batch_size]
            loss = F.cross_entropy(classifier(train[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    with torch.no_grad():
        predicted = classifier(test).argmax(dim=1).cpu()
    return float((predicted == test_labels.cpu()).float().mean())
