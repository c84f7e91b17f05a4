"""nodes/preview.py in-process: what the editor's previews (js/steer.js) are computed from — the same guiders code
the nodes run — and what a model file's header tells about its family and PAG blocks."""

from __future__ import annotations

from types import ModuleType

import pytest

from guiders.schedule import ScaleSchedule
from guiders.skip import CFGSkip
from testbed.comfy import MODELS


@pytest.fixture(scope="module")
def preview(steer: ModuleType) -> ModuleType:
    return steer.nodes.preview


UNET = "model.diffusion_model.{}.attn1.to_q.weight"


@pytest.mark.parametrize(("keys", "family", "blocks"), [
    ([UNET.format("input_blocks.1.1.transformer_blocks.0"), UNET.format("middle_block.1.transformer_blocks.0")],
     "SD1.5", ["input.1", "middle.0"]),
    ([UNET.format(f"output_blocks.0.1.transformer_blocks.{i}") for i in range(10)]
     + ["model.diffusion_model.label_emb.0.0.weight"], "SDXL", ["output.0.0–9"]),
    (["model.diffusion_model.joint_blocks.3.x_block.attn.qkv.weight"], "SD3", ["joint.3"]),
    (["double_blocks.0.img_attn.qkv.weight"], "Flux", []),
    (["first_stage_model.decoder.conv_in.weight"], "unknown", []),
])
def test_model_info_from_keys(preview: ModuleType, keys: list[str], family: str, blocks: list[str]) -> None:
    info = preview.model_info(keys)
    assert (info["family"], info["blocks"], info["flow"]) == (family, blocks, family in ("SD3", "Flux"))


def test_model_info_of_the_tiny_checkpoint_matches_what_steer_pag_accepts(preview: ModuleType) -> None:
    keys = preview.safetensors_keys(str(MODELS / "checkpoints" / "steer_tiny_sd15.safetensors"))
    assert preview.model_info(keys) == {"family": "SD1.5", "flow": False,
                                        "blocks": ["input.1", "middle.0", "output.0", "output.1"]}


def test_schedule_preview_is_the_schedule(preview: ModuleType) -> None:
    values = {"curve": "cosine_down", "cfg_min": 3.0, "switch_at": 0.5, "exponent": 2.0, "custom": "9"}
    result = preview.preview("SteerScaleSchedule", values, 10.0, 6, "normal")
    schedule = ScaleSchedule("cosine_down", 3.0)
    assert [s for _, s in result["scales"]] == [schedule.scale(10.0, i, 6) for i in range(6)] and result["per_step"]
    smooth = preview.preview("SteerScaleSchedule", values, None, None, None)
    assert len(smooth["scales"]) == preview.CURVE_POINTS and not smooth["per_step"] and smooth["cfg"] == 1.0
    custom = preview.preview("SteerScaleSchedule", {**values, "curve": "custom", "custom": "12, 8"}, 7.0, 4, "normal")
    assert [s for _, s in custom["scales"]] == [12.0, 8.0, 8.0, 8.0]
    with pytest.raises(ValueError, match="value 2"):
        preview.preview("SteerScaleSchedule", {**values, "curve": "custom", "custom": "12, x"}, 7.0, 4, "normal")


@pytest.mark.parametrize("flow", [False, True])
def test_sigma_skip_preview_uses_the_schedules_sigmas(preview: ModuleType, flow: bool) -> None:
    """SD1.5/SDXL sigmas start at 14.61 (ComfyUI's discrete schedule), flow ones at 1; the guided steps are the node's
    own decision on those sigmas."""
    values = {"mode": "sigma", "sigma_high": 0.8 if flow else 5.42, "sigma_low": 0.2 if flow else 0.28}
    result = preview.preview("SteerCFGSkip", values, 7.0, 10, "normal", flow=flow)
    sigmas = result["sigmas"]
    assert len(sigmas) == 10 and sigmas == sorted(sigmas, reverse=True) and sigmas[-1] > 0
    assert sigmas[0] == pytest.approx(1.0 if flow else 14.6146, abs=1e-3)
    skip = CFGSkip("sigma", sigma_high=values["sigma_high"], sigma_low=values["sigma_low"])
    assert result["active"] == [skip.guides_step(i, 10, s) for i, s in enumerate(sigmas)]
    assert 0 < sum(result["active"]) < 10


def test_window_previews_and_refusals(preview: ModuleType) -> None:
    pag = preview.preview("SteerPAG", {"scale": 3.0, "blocks": "middle.0, joint.1", "start_percent": 0.0,
                                       "end_percent": 0.5}, 5.0, 5, "normal")
    assert pag["active"] == [True, True, True, False, False] and pag["blocks"] == ["middle.0", "joint.1"]
    assert preview.preview("SteerCFGSkip", {"mode": "adaptive"}, 7.0, 5, "normal")["active"] is None
    assert preview.preview("SteerCFGSkip", {"mode": "percent", "start_percent": 0.2, "end_percent": 0.6}, None,
                           None, None) == {"active": None, "window": [0.2, 0.6]}
    with pytest.raises(ValueError, match="no preview"):
        preview.preview("SteerGuider", {}, 7.0, 5, "normal")
