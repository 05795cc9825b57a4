"""An independent reference for fastntk.infinite's quadrature.

Adaptive Gauss-Kronrod (scipy.integrate.quad, relative tolerance 1e-13) in
pre-activation units, with the activations written out in scalar math (not
torch), breakpoints at each activation's kinks and bends and on a geometric
ladder around them, and nested 1-D integrals (outer over u, inner over v
given u) for the pairs. Slow (seconds per pair), so the tests compare
against a few live values and against the table REFERENCE below, which
``python tests/infinite_reference.py`` regenerates.
"""

from __future__ import annotations

import math

from scipy import integrate

def _sig(h):
    return 1 / (1 + math.exp(-h)) if h >= 0 else math.exp(h) / (1 + math.exp(h))

K0, K1 = math.sqrt(2 / math.pi), 0.044715

def phis(name, beta=1.0, thr=20.0, slope=0.01):
    if name == "tanh":
        return math.tanh, lambda h: 1 / math.cosh(h) ** 2 if abs(h) < 350 else 0.0
    if name == "sigmoid":
        return _sig, lambda h: _sig(h) * _sig(-h)
    if name == "erf":
        return math.erf, lambda h: 2 / math.sqrt(math.pi) * math.exp(-h * h)
    if name == "gelu":
        return (lambda h: 0.5 * h * math.erfc(-h / math.sqrt(2)),
                lambda h: 0.5 * math.erfc(-h / math.sqrt(2)) + h * math.exp(-h * h / 2) / math.sqrt(2 * math.pi))
    if name == "gelu_tanh":
        def f(h):
            return 0.5 * h * (1 + math.tanh(K0 * (h + K1 * h ** 3)))
        def df(h):
            t = math.tanh(K0 * (h + K1 * h ** 3))
            return 0.5 * (1 + t) + 0.5 * h * (1 - t * t) * K0 * (1 + 3 * K1 * h * h)
        return f, df
    if name == "silu":
        return lambda h: h * _sig(h), lambda h: _sig(h) * (1 + h * _sig(-h))
    if name == "softplus":
        def f(h):
            z = beta * h
            return h if z > thr else (max(z, 0) + math.log1p(math.exp(-abs(z)))) / beta
        return f, lambda h: 1.0 if beta * h > thr else _sig(beta * h)
    if name == "relu":
        return lambda h: max(h, 0.0), lambda h: 1.0 if h > 0 else 0.0
    if name == "leaky_relu":
        return lambda h: h if h > 0 else slope * h, lambda h: 1.0 if h > 0 else slope
    raise KeyError(name)

def _pts(center_list, lo, hi, width):
    pts = set()
    for c in center_list:
        for k in range(-3, 40):
            for sgn in (-1, 1):
                p = c + sgn * width * 4.0 ** k
                if lo < p < hi:
                    pts.add(p)
        if lo < c < hi:
            pts.add(c)
    return sorted(pts)

def _gauss_int(f, m, sd, centers, width=1.0):
    """int f(h) N(h; m, sd^2) dh over m +- 10 sd with breakpoints."""
    if sd == 0:
        return f(m)
    lo, hi = m - 10 * sd, m + 10 * sd
    pts = _pts(list(centers) + [m], lo, hi, min(width, sd))
    edges = [lo] + pts + [hi]
    tot = 0.0
    c = 1 / (sd * math.sqrt(2 * math.pi))
    for a, b in zip(edges[:-1], edges[1:]):
        v, _ = integrate.quad(lambda h: f(h) * math.exp(-0.5 * ((h - m) / sd) ** 2) * c, a, b,
                              epsabs=0, epsrel=1e-13, limit=200)
        tot += v
    return tot

def centers_of(name, beta=1.0, thr=20.0):
    return [0.0, thr / beta] if name == "softplus" else [0.0]

def same(name, q, **kw):
    f, df = phis(name, **kw)
    cen = centers_of(name, kw.get("beta", 1.0), kw.get("thr", 20.0))
    s = math.sqrt(q)
    return (_gauss_int(lambda h: f(h) ** 2, 0.0, s, cen), _gauss_int(lambda h: df(h) ** 2, 0.0, s, cen))

def pair(name, s1, s2, c, **kw):
    """(E f(u) f(v), E f'(u) f'(v)) by nested adaptive quadrature: outer over u, inner over v | u."""
    f, df = phis(name, **kw)
    cen = centers_of(name, kw.get("beta", 1.0), kw.get("thr", 20.0))
    sa = math.sqrt(s1)
    rho = c / (sa * math.sqrt(s2))
    if rho >= 1 - 1e-15:
        b = math.sqrt(s2 / s1)
        return (_gauss_int(lambda h: f(h) * f(b * h), 0.0, sa, cen + [x / b for x in cen]),
                _gauss_int(lambda h: df(h) * df(b * h), 0.0, sa, cen + [x / b for x in cen]))
    sd = math.sqrt(s2 * (1 - rho * rho))
    k = c / s1
    out = []
    for g in (f, df):
        inner = lambda u: _gauss_int(g, k * u, sd, cen)
        wid = min(1.0, sd / abs(k)) if k != 0 else 1.0
        out.append(_gauss_int(lambda u: g(u) * inner(u), 0.0, sa, cen + ([x / k for x in cen] if k else []), wid))
    return tuple(out)


def kernel(activation: str, sq1: float, sq2: float, dot: float, n0: int, depth: int,
           sigma_w: float, sigma_b: float) -> tuple[float, float]:
    """(NNGP, NTK) in NTK parametrization for inputs with squared norms
    sq1, sq2, inner product dot and n0 features, by the layer recursion."""
    sw2, sb2 = sigma_w ** 2, sigma_b ** 2
    s1, s2 = sw2 * sq1 / n0 + sb2, sw2 * sq2 / n0 + sb2
    c = sw2 * dot / n0 + sb2
    theta = c
    for _ in range(depth - 1):
        e, de = pair(activation, s1, s2, c)
        theta = theta * sw2 * de + sw2 * e + sb2
        c = sw2 * e + sb2
        s1 = sw2 * same(activation, s1)[0] + sb2
        s2 = sw2 * same(activation, s2)[0] + sb2
    return c, theta


# (activation, sq1, sq2, dot, n0, depth, sigma_w, sigma_b) -> (NNGP, NTK)
CASES = [
    ("tanh", 20.0, 20.0, 12.0, 20, 11, 1.5, 0.1),
    ("tanh", 1.0, 1.0, 0.99999, 1, 3, 1.5, 0.0),
    ("tanh", 1.0, 2.0, -0.5, 1, 3, 1e3, 0.5),
    ("gelu", 1.0, 1.0, 0.6, 1, 11, 2.5, 0.1),
    ("gelu_tanh", 1.0, 1.5, 0.3, 1, 4, 1.2, 0.2),
    ("sigmoid", 1.0, 1.0, 0.2, 1, 4, 4.0, 0.3),
    ("silu", 2.0, 1.0, 1.2, 1, 4, 1.7, 0.1),
    ("softplus", 1.0, 1.0, 0.8, 1, 4, 30.0, 0.1),
    ("relu", 1.0, 1.0, 0.99999, 1, 4, 1.4, 0.0),
    ("erf", 1.0, 0.5, 0.4, 1, 4, 50.0, 0.1),
]

REFERENCE = {
    ('tanh', 1.0, 1.0, 0.99999, 1, 3, 1.5, 0.0): (0.9676008354539491, 3.7710541840494254),
    ('tanh', 1.0, 2.0, -0.5, 1, 3, 1000.0, 0.5): (-147881.99403165534, -456000.83148150484),
    ('gelu_tanh', 1.0, 1.5, 0.3, 1, 4, 1.2, 0.2): (0.28976194998028293, 0.6386214020288851),
    ('sigmoid', 1.0, 1.0, 0.2, 1, 4, 4.0, 0.3): (5.705751262486309, 8.141675170698319),
    ('silu', 2.0, 1.0, 1.2, 1, 4, 1.7, 0.1): (7.634553841798307, 27.833093439841267),
    ('tanh', 20.0, 20.0, 12.0, 20, 11, 1.5, 0.1): (0.32138458005995074, 3.469596441862744),
    ('relu', 1.0, 1.0, 0.99999, 1, 4, 1.4, 0.0): (1.8447179250826882, 7.363140468038673),
    ('softplus', 1.0, 1.0, 0.8, 1, 4, 30.0, 0.1): (71117237998.01247, 208469379596.33423),
    ('erf', 1.0, 0.5, 0.4, 1, 4, 50.0, 0.1): (414.1688639168923, 1796.555333213226),
    ('gelu', 1.0, 1.0, 0.6, 1, 11, 2.5, 0.1): (488633.09399574663, 2286130.987515796),
}


if __name__ == "__main__":
    import sys
    todo = CASES if len(sys.argv) < 2 else [CASES[int(i)] for i in sys.argv[1:]]
    for case in todo:
        print(f"    {case!r}: {kernel(*case)!r},", flush=True)
