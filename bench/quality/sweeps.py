"""The lab's sweeps: which settings run, by default (minutes on a shared 2-core CPU) and with --full."""

from __future__ import annotations

from .lab import NEGATIVE_OFFSET, Setting

CFG_SCALES = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 8.0, 12.0, 20.0)
GUIDED_SCALES = (1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
HIGH_SCALES = (6.0, 8.0, 12.0, 20.0)
CFG_PP_LAMBDAS = (0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0)
SCHEDULE_CURVES = ("linear_down", "linear_up", "cosine_down", "cosine_up", "step_down", "step_up", "power_down",
                   "power_up")
INTERVALS = {  # name: SteerCFGSkip inputs (mode, window)
    "interval percent 0.4–1": {"mode": "percent", "start_percent": 0.4, "end_percent": 1.0},
    "interval percent 0.2–0.8": {"mode": "percent", "start_percent": 0.2, "end_percent": 0.8},
    "interval σ (0.28, 5.42]": {"mode": "sigma", "sigma_high": 5.42, "sigma_low": 0.28},
    "interval σ (0.28, 2.9]": {"mode": "sigma", "sigma_high": 2.9, "sigma_low": 0.28},
}
ADAPTIVE_THRESHOLDS = (0.99, 0.995, 0.999)
SAMPLERS = ("euler", "euler_ancestral", "heun", "dpm_2", "dpmpp_2m", "dpmpp_2m_sde", "lms")
STEPS = (10, 20, 40)
SKIP_DEFAULTS = {"mode": "percent", "start_percent": 0.0, "end_percent": 1.0, "sigma_high": 5.42, "sigma_low": 0.28,
                 "threshold": 0.99}
SCHEDULE_DEFAULTS = {"cfg_min": 1.0, "switch_at": 0.5, "exponent": 2.0, "custom": ""}
THRESHOLD_DEFAULTS = {"mimic_scale": 3.0, "threshold_percentile": 1.0, "startpoint": "MEAN", "variability": "AD",
                      "interpolate_phi": 1.0}


def _skip(**inputs) -> tuple[str, dict]:
    return "SteerCFGSkip", SKIP_DEFAULTS | inputs


def settings(full: bool = False) -> list[Setting]:
    """Every setting of a run. The default keeps each sweep's shape with fewer points."""
    pick = (lambda values: values) if full else (lambda values: values[::2] if len(values) > 4 else values)
    out: list[Setting] = []
    out += [Setting("cfg", s) for s in CFG_SCALES]
    out += [Setting("cfg", s, kind="flow") for s in (CFG_SCALES if full else (1.0, *pick(GUIDED_SCALES)))]
    for name, window in INTERVALS.items():
        out += [Setting(name, s, dict(window), (_skip(**window),)) for s in pick(GUIDED_SCALES)]
    for threshold in ADAPTIVE_THRESHOLDS if full else ADAPTIVE_THRESHOLDS[::2]:
        params = {"mode": "adaptive", "threshold": threshold}
        out += [Setting(f"adaptive γ {threshold}", s, params, (_skip(**params),), kind=kind)
                for kind in ("eps", "flow") for s in pick(GUIDED_SCALES)]
    for curve in SCHEDULE_CURVES:
        params = SCHEDULE_DEFAULTS | {"curve": curve}
        out += [Setting(f"schedule {curve}", s, {"curve": curve, "cfg_min": 1.0},
                        (("SteerScaleSchedule", params),)) for s in (2.0, 4.0, 8.0)]
    for mode in ("latent", "imagen"):
        params = THRESHOLD_DEFAULTS | {"mode": mode} | ({"threshold_percentile": 0.995} if mode == "imagen" else {})
        shown = {"mode": mode} | ({"mimic_scale": 3.0} if mode == "latent" else {"percentile": 0.995})
        out += [Setting(f"threshold {mode}", s, shown, (("SteerDynamicThreshold", params),))
                for s in (2.0, 4.0, *HIGH_SCALES)]
    for sampler in ("euler", "dpmpp_2m") if full else ("euler",):
        out += [Setting("cfg++", lam, {}, sampler=sampler, cfg_pp=True) for lam in CFG_PP_LAMBDAS]
        if sampler != "euler":
            out += [Setting("cfg", s, sampler=sampler) for s in CFG_SCALES[:8]]
    for mode in ("subtract", "perpendicular"):
        for weight in (0.5, 1.0, 2.0):
            params = {"scale": weight, "mode": mode, NEGATIVE_OFFSET: 1}
            out += [Setting(f"extra negative ({mode})", s, {"weight": weight, "mode": mode},
                            (("SteerNegative", params),)) for s in (1.0, 3.0)]
    for sampler in SAMPLERS if full else ("euler", "euler_ancestral", "heun", "dpmpp_2m"):
        for steps in STEPS if full else (10, 40):
            out += [Setting("sampler × steps", s, sampler=sampler, steps=steps) for s in (1.0, 3.0)]
    unique: dict[tuple, Setting] = {}
    for setting in out:
        unique.setdefault(setting.key(), setting)
    return list(unique.values())
