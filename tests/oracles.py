"""The dense oracles every numerical test compares with: each formula written out with
full matrices in float64, independently of the engines and the estimators."""

import numpy as np
from scipy.stats import multivariate_normal


def dense_kernel(name, Z, S, h):
    """k(z_i, s_j) and ∇_z k(z_i, s_j), from the kernel table of the design page."""
    D = Z[:, None, :] - S[None, :, :]
    r = np.sqrt((D**2).sum(-1))
    with np.errstate(divide="ignore", invalid="ignore"):
        unit = np.where(r[..., None] > 0, D / r[..., None], 0.0)
    if name == "gaussian":
        K = np.exp(-(r**2) / (2 * h**2))
        G = -D * K[..., None] / h**2
    elif name == "laplacian":
        K = np.exp(-r / h)
        G = -unit * K[..., None] / h
    elif name == "imq":
        K = (1 + r**2 / h**2) ** -0.5
        G = -D * ((1 + r**2 / h**2) ** -1.5)[..., None] / h**2
    else:
        K = -r
        G = -unit
    return K, G


def dense_mmd2(X, Y, wx, wy, h):
    def k(A, B):
        return np.exp(-((A[:, None] - B[None]) ** 2).sum(-1) / (2 * h * h))

    return wx @ k(X, X) @ wx - 2 * wx @ k(X, Y) @ wy + wy @ k(Y, Y) @ wy


def gauss(A, B, h):
    r2 = ((A[:, None, :] - B[None, :, :]) ** 2).sum(-1)
    return np.exp(-r2 / (2 * h * h))


def witness_grad(x, w, y, b, h):
    """∇f(x_i) for f(z) = Σ_j w_j k(z, x_j) - Σ_m b_m k(z, y_m)."""
    Kx, Ky = gauss(x, x, h), gauss(x, y, h)
    gx = -((x[:, None, :] - x[None, :, :]) * (Kx * w)[..., None]).sum(1) / h**2
    gy = -((x[:, None, :] - y[None, :, :]) * (Ky * b)[..., None]).sum(1) / h**2
    return gx - gy


def energy(x, w, y, b, h):
    return 0.5 * w @ gauss(x, x, h) @ w - w @ gauss(x, y, h) @ b + 0.5 * b @ gauss(y, y, h) @ b


def simplex_projection_by_bisection(v):
    """argmin_{w ∈ Δ} |w - v|: w = max(v - θ, 0) with θ found by bisection on Σ w = 1."""
    lo, hi = v.min() - 1.0, v.max()
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if np.maximum(v - mid, 0).sum() > 1:
            lo = mid
        else:
            hi = mid
    w = np.maximum(v - 0.5 * (lo + hi), 0)
    return w / w.sum()


def dense_ift_iteration(x, w, y, b, h, tau, alpha, beta, weight_steps):
    x1 = x - tau * alpha * witness_grad(x, w, y, b, h)
    K, c, eta = gauss(x1, x1, h), gauss(x1, y, h) @ b, tau * beta
    L = (1 + 1 / eta) * np.abs(K).sum(1).max()

    def grad_q(v):  # ∇ of ½vᵀKv - vᵀc + 1/(2η)(v - w)ᵀK(v - w)
        return K @ v - c + K @ (v - w) / eta

    v_prev, z, t = w, w, 1.0
    for _ in range(weight_steps):
        v = simplex_projection_by_bisection(z - grad_q(z) / L)
        t_next = (1 + np.sqrt(1 + 4 * t * t)) / 2
        z = v + (t - 1) / t_next * (v - v_prev)
        v_prev, t = v, t_next
    return x1, v


def dense_wfr_iterations(x, w, y, b, h, tau, alpha, beta, n_iter, conserve_mass=True):
    for _ in range(n_iter):
        x = x - tau * alpha * witness_grad(x, w, y, b, h)
        f = gauss(x, x, h) @ w - gauss(x, y, h) @ b  # the witness at the new positions
        w = w * np.exp(-tau * beta * f)
        if conserve_mass:
            w = w / w.sum()
    return x, w


def phi(Y, X, h):
    """φ_h(y_m - x_i), the N(0, h² I) density, as an (M, N) matrix."""
    d = Y.shape[1]
    r2 = ((Y[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    return np.exp(-r2 / (2 * h * h)) / (2 * np.pi * h * h) ** (d / 2)


def dense_inclusive_kl_iterations(x, w, y, b, h, tau, alpha, beta, n_iter):
    """Section 1 of the design page with plain densities (fine in d = 2)."""
    losses = [-b @ np.log(phi(y, x, h) @ w)]
    for _ in range(n_iter):
        P = phi(y, x, h)
        mu = P @ w
        pull = ((b / mu)[:, None, None] * P[:, :, None] * (y[:, None, :] - x[None, :, :])).sum(0)
        x = x + tau * alpha / h**2 * pull
        P = phi(y, x, h)
        R = (b / (P @ w)) @ P
        w = w * np.exp(tau * beta * (R - 1))
        w = w / w.sum()
        losses.append(-b @ np.log(phi(y, x, h) @ w))
    return x, w, np.array(losses)


def dense_log_likelihood(y, b, x, C, w):
    dens = np.stack([multivariate_normal(x[i], C[i]).pdf(y) for i in range(len(w))], axis=1)
    return float(b @ np.log(dens @ w))


def dense_moments(y, b, x, C, w):
    """``E_mi = b_m N(y_m; x_i, C_i) / μ(y_m)`` from dense densities."""
    dens = np.stack([multivariate_normal(x[i], C[i]).pdf(y) for i in range(len(w))], axis=1)
    return b[:, None] * dens / (dens @ w)[:, None]


def dense_em_fraction_step(y, b, x, C, w, t, reg):
    """Every component a fraction ``ρ_i = t R_i / (1 + t R_i)`` of the way to its M-step of
    EM with the ``reg`` term (the responsibility-weighted mean, then the scatter about it
    plus ``reg I / (w_i R_i)``)."""
    E = dense_moments(y, b, x, C, w)
    R = E.sum(0)
    target = E.T @ y / R[:, None]
    rho = t * R / (1 + t * R)
    x_new = x + rho[:, None] * (target - x)
    r = y[:, None, :] - x_new[None, :, :]
    scatter = (np.einsum("mi,mid,mie->ide", E, r, r)
               + (reg / w)[:, None, None] * np.eye(y.shape[1])) / R[:, None, None]
    return x_new, C + rho[:, None, None] * (scatter - C)


def dense_weight_step(y, b, x, C, w, t_beta):
    """A fraction ``t_beta / (1 + t_beta)`` of the way to EM's weights ``Σ_m b_m γ_mi``, at
    the moved state."""
    dens = np.stack([multivariate_normal(x[i], C[i]).pdf(y) for i in range(len(w))], axis=1)
    em = (b[:, None] * dens * w / (dens @ w)[:, None]).sum(0)
    rho = t_beta / (1 + t_beta)
    return (1 - rho) * w + rho * em / em.sum()


def dense_tied_step(y, b, x, C, w, t, reg):
    """The means as in ``dense_em_fraction_step``; the shared shape a fraction
    ``t r / (1 + t r)``, ``r = Σ_i w_i R_i``, of the way to the pooled scatter
    ``(Σ_i w_i Σ_m E_mi (y_m - x_i)(y_m - x_i)ᵀ + reg I) / r`` (about the moved means)."""
    E = dense_moments(y, b, x, C, w)
    R = E.sum(0)
    rho = t * R / (1 + t * R)
    x_new = x + rho[:, None] * (E.T @ y / R[:, None] - x)
    r = y[:, None, :] - x_new[None, :, :]
    total = w @ R
    pooled = (np.einsum("i,mi,mid,mie->de", w, E, r, r) + reg * np.eye(y.shape[1])) / total
    shared = C[0] + t * total / (1 + t * total) * (pooled - C[0])
    return x_new, np.repeat(shared[None], len(w), axis=0)


def dense_energy_distance(X, Y, x_weights=None, y_weights=None) -> float:
    """``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` from the full distance matrices."""
    a = np.full(len(X), 1 / len(X)) if x_weights is None else x_weights / x_weights.sum()
    b = np.full(len(Y), 1 / len(Y)) if y_weights is None else y_weights / y_weights.sum()

    def dist(P, Q):
        return np.sqrt(np.sum((P[:, None, :] - Q[None, :, :]) ** 2, axis=-1))

    return float(2 * a @ dist(X, Y) @ b - a @ dist(X, X) @ a - b @ dist(Y, Y) @ b)
