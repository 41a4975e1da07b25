"""Models: gradients against central finite differences, training, init and the registry."""

from __future__ import annotations

import numpy as np
import pytest

from worker.models import (
    MLP,
    MODELS,
    LinearRegression,
    Model,
    ParamSpec,
    SoftmaxRegression,
    init_params,
    make_model,
)
from worker.models.base import init_array

NUM_FEATURES, NUM_CLASSES, BATCH = 5, 3, 8

CASES = {
    "linear-1": lambda: LinearRegression(NUM_FEATURES),
    "linear-2": lambda: LinearRegression(NUM_FEATURES, num_outputs=2),
    "softmax": lambda: SoftmaxRegression(NUM_FEATURES, NUM_CLASSES),
    "mlp": lambda: MLP(NUM_FEATURES, NUM_CLASSES, hidden=(7, 4)),
    "mlp-no-hidden": lambda: MLP(NUM_FEATURES, NUM_CLASSES, hidden=()),
}


def random_params(model: Model, rng: np.random.Generator, dtype=np.float64) -> dict:
    """Non-zero parameters, so every gradient entry is exercised."""
    specs = model.parameters()
    return {name: rng.normal(0.0, 0.5, spec.shape).astype(dtype) for name, spec in specs.items()}


def batch(model: Model, rng: np.random.Generator, n: int = BATCH) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=(n, NUM_FEATURES))
    if model.task == "classification":
        return x, rng.integers(0, NUM_CLASSES, size=n)
    outputs = model.parameters()["b"].shape[0]
    return x, rng.normal(size=(n,) if outputs == 1 else (n, outputs))


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradients_match_central_differences(case: str) -> None:
    model = CASES[case]()
    rng = np.random.default_rng(0)
    params = random_params(model, rng)
    x, y = batch(model, rng)
    _, grads = model.loss_and_grads(params, x, y)
    assert set(grads) == set(params)
    eps = 1e-6
    for name, value in params.items():
        for flat in rng.choice(value.size, size=min(4, value.size), replace=False):
            idx = np.unravel_index(flat, value.shape)
            plus = {k: v.copy() for k, v in params.items()}
            minus = {k: v.copy() for k, v in params.items()}
            plus[name][idx] += eps
            minus[name][idx] -= eps
            up, down = model.loss_and_grads(plus, x, y)[0], model.loss_and_grads(minus, x, y)[0]
            numeric = (up - down) / (2 * eps)
            np.testing.assert_allclose(
                grads[name][idx], numeric, rtol=1e-5, atol=1e-8, err_msg=f"{case} {name}{idx}"
            )


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grads_keep_param_shapes_and_dtypes(case: str, dtype: type) -> None:
    model = CASES[case]()
    rng = np.random.default_rng(1)
    params = random_params(model, rng, dtype)
    x, y = batch(model, rng)  # float64 inputs must not upcast float32 params
    loss, grads = model.loss_and_grads(params, x, y)
    assert type(loss) is float and np.isfinite(loss)
    for name, value in params.items():
        assert grads[name].shape == value.shape
        assert grads[name].dtype == value.dtype


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradient_descent_decreases_loss(case: str) -> None:
    model = CASES[case]()
    rng = np.random.default_rng(2)
    x = rng.normal(size=(64, NUM_FEATURES))
    true_w = rng.normal(size=(NUM_FEATURES, 2))
    if model.task == "classification":
        y = np.argmax(x @ rng.normal(size=(NUM_FEATURES, NUM_CLASSES)), axis=1)
    else:
        outputs = model.parameters()["b"].shape[0]
        y = (x @ true_w)[:, 0] if outputs == 1 else x @ true_w
    params = init_params(model, seed=3)
    losses = []
    for _ in range(50):
        loss, grads = model.loss_and_grads(params, x, y)
        losses.append(loss)
        params = {k: v - np.float32(0.2) * grads[k] for k, v in params.items()}
    assert all(v.dtype == np.float32 for v in params.values())
    assert losses[-1] < 0.6 * losses[0]
    assert all(b <= a + 1e-6 for a, b in zip(losses, losses[1:]))


@pytest.mark.parametrize("case", sorted(CASES))
def test_predict_shapes(case: str) -> None:
    model = CASES[case]()
    rng = np.random.default_rng(4)
    params = random_params(model, rng, np.float32)
    x, y = batch(model, rng)
    pred = model.predict(params, x)
    if model.task == "classification":
        assert pred.shape == (BATCH,) and pred.dtype.kind == "i"
        assert pred.min() >= 0 and pred.max() < NUM_CLASSES
    else:
        assert pred.shape == y.shape and pred.dtype == np.float32


def test_linear_loss_is_half_mean_squared_error() -> None:
    model = LinearRegression(2)
    params = {"w": np.array([[1.0], [2.0]]), "b": np.array([0.5])}
    x = np.array([[1.0, 0.0], [0.0, 1.0]])
    y = np.array([1.0, 3.5])  # residuals 0.5 and -1.0
    loss, _ = model.loss_and_grads(params, x, y)
    assert loss == pytest.approx(0.5 * (0.25 + 1.0) / 2)


def test_softmax_is_stable_for_huge_logits() -> None:
    model = SoftmaxRegression(2, 3)
    params = {
        "w": np.array([[1e4, 0.0, -1e4], [0.0, 1e4, 0.0]], dtype=np.float32),
        "b": np.zeros(3, np.float32),
    }
    x = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    loss, grads = model.loss_and_grads(params, x, np.array([2, 1]))
    assert np.isfinite(loss) and loss == pytest.approx(1e4, rel=1e-6)
    assert all(np.isfinite(g).all() for g in grads.values())


def test_classifiers_refuse_bad_labels() -> None:
    model = SoftmaxRegression(2, 3)
    params = init_params(model, seed=0)
    x = np.ones((2, 2), np.float32)
    for y in (np.array([0, 3]), np.array([-1, 0]), np.array([0.0, 1.0]), np.array([[0, 1]])):
        with pytest.raises(ValueError):
            model.loss_and_grads(params, x, y)


def test_models_refuse_wrong_feature_count() -> None:
    for model in (c() for c in CASES.values()):
        params = init_params(model, seed=0)
        with pytest.raises(ValueError, match="x must have shape"):
            x = np.ones((2, NUM_FEATURES + 1))
            model.loss_and_grads(params, x, np.zeros(2, np.int64))


def test_mlp_parameters_are_layered_with_glorot_weights() -> None:
    specs = MLP(5, 3, hidden=(7, 4)).parameters()
    assert list(specs) == ["w0", "b0", "w1", "b1", "w2", "b2"]
    assert [specs[f"w{i}"].shape for i in range(3)] == [(5, 7), (7, 4), (4, 3)]
    assert all(specs[f"w{i}"].init == "glorot" and specs[f"b{i}"].init == "zeros" for i in range(3))


def test_init_params_is_deterministic_and_follows_specs() -> None:
    model = MLP(30, 10, hidden=(50,))
    a, b, c = init_params(model, seed=7), init_params(model, seed=7), init_params(model, seed=8)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["w0"], c["w0"])
    assert a["w0"].dtype == np.float32
    assert init_params(model, 7, np.float64)["w0"].dtype == np.float64
    limit = np.sqrt(6 / (30 + 50))
    assert np.abs(a["w0"]).max() <= limit and np.abs(a["w0"]).max() > 0.9 * limit
    assert not a["b0"].any()


def test_init_array_draws_per_name() -> None:
    normal = ParamSpec((200, 50), init="normal", scale=0.1)
    uniform = ParamSpec((200, 50), init="uniform", scale=0.3)
    x = init_array("x", normal, seed=1, dtype=np.float64)
    assert abs(x.std() - 0.1) < 0.005 and abs(x.mean()) < 0.005
    u = init_array("u", uniform, seed=1)
    assert np.abs(u).max() <= 0.3 and np.abs(u).max() > 0.29
    assert not np.array_equal(init_array("a", normal, 1), init_array("b", normal, 1))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(shape=()),
        dict(shape=(0, 3)),
        dict(shape=(2,), init="he"),
        dict(shape=(2,), scale=-1.0),
        dict(shape=(2,), scale=float("nan")),
    ],
)
def test_param_spec_refuses_bad_values(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ParamSpec(**kwargs)


def test_param_spec_normalises_shape() -> None:
    spec = ParamSpec([np.int64(3), 2], init="normal", scale=1)
    assert spec.shape == (3, 2) and spec == ParamSpec((3, 2), "normal", 1.0)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_make_model_builds_every_registered_model(name: str) -> None:
    model = make_model(name, num_features=4, num_classes=3)
    assert isinstance(model, Model)
    assert model.task in ("classification", "regression")


def test_make_model_passes_options() -> None:
    assert make_model("mlp", 4, 3, hidden=(5, 6)).hidden == (5, 6)
    assert make_model("linear", 4, 2).num_outputs == 2


def test_make_model_rejects_unknown_names() -> None:
    message = r"unknown model 'resnet'; choose from linear, mlp, softmax"
    with pytest.raises(ValueError, match=message):
        make_model("resnet", 4, 3)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("sizes", [(0, 3), (-1, 3), (4, 0), (2.5, 3), (True, 3)])
def test_make_model_rejects_bad_sizes(name: str, sizes: tuple) -> None:
    with pytest.raises(ValueError):
        make_model(name, *sizes)


@pytest.mark.parametrize("name", ["softmax", "mlp"])
def test_classifiers_need_two_classes(name: str) -> None:
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        make_model(name, 4, 1)


@pytest.mark.parametrize("hidden", [(0,), (4, -1), 8, "8"])
def test_mlp_rejects_bad_hidden(hidden) -> None:
    with pytest.raises(ValueError):
        MLP(4, 3, hidden=hidden)


@pytest.mark.gpu
@pytest.mark.parametrize("case", sorted(CASES))
def test_cupy_matches_numpy(case: str) -> None:
    cupy = pytest.importorskip("cupy")
    from worker.xp import DeviceUnavailableError, get_xp, to_device, to_host

    try:
        xp = get_xp("cuda")
    except DeviceUnavailableError as exc:
        pytest.skip(str(exc))
    assert xp is cupy
    model = CASES[case]()
    rng = np.random.default_rng(5)
    params = random_params(model, rng, np.float32)
    x, y = batch(model, rng)
    loss, grads = model.loss_and_grads(params, x, y)
    d_params = {k: to_device(v, xp) for k, v in params.items()}
    d_x, d_y = to_device(x, xp), to_device(y, xp)
    d_loss, d_grads = model.loss_and_grads(d_params, d_x, d_y)
    assert type(d_loss) is float and d_loss == pytest.approx(loss, rel=1e-5, abs=1e-5)
    for name in params:
        assert isinstance(d_grads[name], cupy.ndarray) and d_grads[name].dtype == np.float32
        np.testing.assert_allclose(to_host(d_grads[name]), grads[name], rtol=1e-5, atol=1e-5)
    pred = to_host(model.predict(d_params, d_x))
    np.testing.assert_allclose(pred, model.predict(params, x), rtol=1e-5, atol=1e-5)
