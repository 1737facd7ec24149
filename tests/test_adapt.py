import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ftops import adapt, models, strategies

LABELS = ["negative", "neutral", "positive"]
TWEETS = ["@united thanks for the great flight", "my bag is lost again", "flight delayed, no info",
          "ok I guess"]


# ------------------------------------------------------------ losses on known values


def test_dann_loss_is_the_hand_computed_cross_entropy():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    domain = torch.tensor([0, 1, 1])
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1)) + math.log(2)) / 3
    assert adapt.dann_loss(logits, domain).item() == pytest.approx(expected, rel=1e-6)


def test_mmd_of_identical_sets_is_zero():
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    assert adapt.mmd(x, x.clone()).item() == pytest.approx(0.0, abs=1e-6)


def test_mmd_with_one_bandwidth_matches_the_kernel_sums():
    source, target = torch.tensor([[0.0], [1.0]]), torch.tensor([[2.0], [3.0]])

    def k(d):  # Gaussian kernel, bandwidth 1: exp(-d^2 / 2)
        return math.exp(-d * d / 2)

    k_ss = (k(0) + k(1) + k(1) + k(0)) / 4          # 0-0, 0-1, 1-0, 1-1
    k_tt = (k(0) + k(1) + k(1) + k(0)) / 4          # 2-2, 2-3, 3-2, 3-3
    k_st = (k(2) + k(3) + k(1) + k(2)) / 4          # 0-2, 0-3, 1-2, 1-3
    expected = k_ss + k_tt - 2 * k_st
    assert adapt.mmd(source, target, [1.0]).item() == pytest.approx(expected, rel=1e-6)
    # multi-kernel: the kernel is a sum, so the MMD is the sum of the single-kernel MMDs
    both = adapt.mmd(source, target, [1.0, 2.0]).item()
    assert both == pytest.approx(expected + adapt.mmd(source, target, [2.0]).item(), rel=1e-6)


def test_mmd_grows_as_the_target_mean_shifts():
    gen = torch.Generator().manual_seed(0)
    source, noise = torch.randn(64, 8, generator=gen), torch.randn(64, 8, generator=gen)
    for bandwidths in ([1.0, 2.0, 4.0], None):  # fixed, and the median heuristic
        values = [adapt.mmd(source, noise + shift, bandwidths).item() for shift in (0.0, 0.5, 1.0, 2.0)]
        assert values == sorted(values) and values[-1] > 10 * values[0], values


def test_too_few_rows_give_a_zero_that_backpropagates():
    features = torch.randn(5, 4, requires_grad=True)
    for loss in (adapt.mmd(features[:1], features[1:]), adapt.kl_alignment(features[:3], features[3:0]),
                 adapt.alignment_loss("mmd", features[:0], features)):
        assert loss.item() == 0.0
        loss.backward()
    with pytest.raises(ValueError, match="mmd or kl"):
        adapt.alignment_loss("wasserstein", features, features)


def test_kl_alignment_is_the_closed_form_gaussian_kl():
    # columns with hand-set statistics: source means (2, 0), unbiased variances (2, 8);
    # target means (3, 1), unbiased variances (12, 2/3)
    source = torch.tensor([[1.0, -2.0], [3.0, 2.0]])
    target = torch.tensor([[0.0, 0.0], [0.0, 2.0], [6.0, 1.0], [6.0, 1.0]])
    ms, vs, mt, vt = [2.0, 0.0], [2.0, 8.0], [3.0, 1.0], [12.0, 2 / 3]

    def kl(m0, v0, m1, v1):  # KL(N(m0, v0) || N(m1, v1)), one dimension
        return 0.5 * (math.log(v1 / v0) + (v0 + (m0 - m1) ** 2) / v1 - 1)

    expected = sum((kl(ms[d], vs[d], mt[d], vt[d]) + kl(mt[d], vt[d], ms[d], vs[d])) / 2 for d in range(2))
    assert adapt.kl_alignment(source, target, eps=0.0).item() == pytest.approx(expected, rel=1e-5)
    normal_s = torch.distributions.Normal(torch.tensor(ms), torch.tensor(vs).sqrt())
    normal_t = torch.distributions.Normal(torch.tensor(mt), torch.tensor(vt).sqrt())
    library = (torch.distributions.kl_divergence(normal_s, normal_t) +
               torch.distributions.kl_divergence(normal_t, normal_s)).sum() / 2
    assert adapt.kl_alignment(source, target, eps=0.0).item() == pytest.approx(library.item(), rel=1e-5)
    assert adapt.alignment_loss("kl", source, source).item() == pytest.approx(0.0, abs=1e-6)


def test_reversal_weight_schedules():
    assert adapt.reversal_weight(0.0, 0.5) == 0.0
    assert adapt.reversal_weight(1.0, 0.5) == pytest.approx(0.5, rel=1e-3)
    ganin = [adapt.reversal_weight(p, 0.5) for p in np.linspace(0, 1, 21)]
    assert all(a < b for a, b in zip(ganin, ganin[1:]))
    assert adapt.reversal_weight(0.5, 2.0, "linear") == 1.0
    assert adapt.reversal_weight(0.0, 2.0, "constant") == 2.0
    assert adapt.reversal_weight(1.7, 1.0, "linear") == 1.0  # progress is clamped to [0, 1]
    with pytest.raises(ValueError, match="schedule"):
        adapt.reversal_weight(0.5, 1.0, "cosine")


def test_grad_reverse_on_a_plain_tensor():
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    y = adapt.grad_reverse(x, 0.3)
    assert torch.equal(y, x)
    (y * torch.tensor([2.0, 5.0])).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([-0.6, -1.5]))


# ------------------------------------------------------------ multi-task


def test_multitask_loss_ignores_unlabelled_rows_and_weights_tasks():
    gen = torch.Generator().manual_seed(0)
    logits = {"sentiment": torch.randn(4, 3, generator=gen), "domain": torch.randn(4, 5, generator=gen),
              "topic": torch.randn(4, 2, generator=gen)}
    labels = {"sentiment": torch.tensor([0, -100, 2, 1]), "domain": torch.tensor([-100, 4, -100, 0]),
              "topic": torch.tensor([-100, -100, -100, -100])}
    total, per_task = adapt.multitask_loss(logits, labels, {"sentiment": 2.0, "domain": 0.5})
    sentiment = F.cross_entropy(logits["sentiment"][[0, 2, 3]], torch.tensor([0, 2, 1]))
    domain = F.cross_entropy(logits["domain"][[1, 3]], torch.tensor([4, 0]))
    assert per_task["sentiment"].item() == pytest.approx(sentiment.item(), rel=1e-6)
    assert per_task["domain"].item() == pytest.approx(domain.item(), rel=1e-6)
    assert per_task["topic"].item() == 0.0  # no labelled row: zero, not NaN
    assert total.item() == pytest.approx(2.0 * sentiment.item() + 0.5 * domain.item(), rel=1e-6)


def test_task_heads_share_the_features_and_train():
    heads = adapt.TaskHeads(8, {"sentiment": 3, "domain": 4})
    features = torch.randn(5, 8, requires_grad=True)
    out = heads(features)
    assert out["sentiment"].shape == (5, 3) and out["domain"].shape == (5, 4)
    total, _ = adapt.multitask_loss(out, {"sentiment": torch.tensor([0, 1, 2, 0, -100]),
                                          "domain": torch.tensor([3, -100, 0, 1, 2])})
    total.backward()
    assert features.grad.abs().sum() > 0 and all(p.grad is not None for p in heads.parameters())


def test_task_metrics_count_only_labelled_rows():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]])
    metrics = adapt.task_metrics(logits, torch.tensor([0, 0, -100, 1]))  # predictions 0, 1, -, 1
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 2 / 3) / 2)  # F1 of each class is 2/3
    assert math.isnan(adapt.task_metrics(logits, [-100] * 4)["accuracy"])


# ------------------------------------------------------------ the real MiniLM


@pytest.fixture(scope="module")
def batch():
    tokenizer = models.load_tokenizer("minilm-l6", 128)
    return tokenizer(TWEETS, padding=True, truncation=True, return_tensors="pt")


def prepared(strategy: str):
    model = models.build_classifier("minilm-l6", LABELS)
    chosen = strategies.get_strategy(strategy)
    return chosen.prepare(model, chosen.Params(), 1e-4, 0.01).model


@pytest.mark.slow
def test_gradient_reversal_flips_and_scales_the_encoder_gradient(batch):
    model = models.build_classifier("minilm-l6", LABELS).eval()  # eval: no dropout noise
    weight = model.bert.encoder.layer[0].attention.self.query.weight
    v = torch.randn(len(TWEETS), 384, generator=torch.Generator().manual_seed(0))
    with adapt.PooledFeatures(model) as pooled:
        model(**batch)
        features = pooled.features
    plain, = torch.autograd.grad((features * v).sum(), weight, retain_graph=True)
    assert plain.abs().sum() > 0
    for w in (0.3, 1.0, 0.0):
        reversed_, = torch.autograd.grad((adapt.grad_reverse(features, w) * v).sum(), weight, retain_graph=True)
        assert torch.allclose(reversed_, -w * plain, atol=1e-7), w
    assert torch.count_nonzero(reversed_) == 0  # weight 0: no signal reaches the encoder

    # the domain classifier learns as usual; only the encoder's gradient is reversed
    torch.manual_seed(0)
    domain_head = adapt.DomainClassifier(384, hidden_dim=16).eval()
    domain = torch.tensor([0, 0, 1, 1])
    loss = adapt.dann_loss(domain_head(features, 1.0), domain)
    encoder_rev, head_rev = torch.autograd.grad(loss, [weight, domain_head.net[0].weight], retain_graph=True)
    plain_loss = adapt.dann_loss(domain_head.net(features), domain)
    encoder_plain, head_plain = torch.autograd.grad(plain_loss, [weight, domain_head.net[0].weight])
    assert torch.allclose(head_rev, head_plain) and torch.allclose(encoder_rev, -encoder_plain, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("strategy, trainable", [
    ("full", "bert.encoder.layer.0.attention.self.query.weight"),
    ("lora", "base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.default.weight"),
    ("prompt_tuning", "prompt_encoder.default.embedding.weight"),
])
def test_pooled_features_for_every_kind_of_strategy(strategy, trainable, batch):
    model = prepared(strategy).eval()
    params = dict(model.named_parameters())
    assert params[trainable].requires_grad
    pooled = adapt.PooledFeatures(model)
    assert pooled.name.endswith("classifier") and "modules_to_save" not in pooled.name
    logits = model(**batch).logits
    features = pooled.features
    assert features.shape == (len(TWEETS), 384)
    assert torch.allclose(pooled.module(features), logits, atol=1e-6)  # it is the head's input
    adapt.mmd(features[:2], features[2:]).backward()
    assert params[trainable].grad is not None and params[trainable].grad.abs().sum() > 0
    pooled.remove()  # e.g. before ONNX export: no hook left on the head
    assert not pooled.module._forward_pre_hooks
    model(**batch)
    assert pooled.features is None
