"""nodes/preview.py in-process: what the editor's previews (js/steer.js) are computed from — the same guiders code
the nodes run — and what a model file's header tells about its family and PAG blocks."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch

from guiders.schedule import ScaleSchedule
from guiders.skip import CFGSkip
from testbed.comfy import MODELS
from testbed.models import newer_params


@pytest.fixture(scope="module")
def preview(steer: ModuleType) -> ModuleType:
    return steer.nodes.preview


# Full-size diffusion models built by ComfyUI's own classes on the meta device (no memory): their state-dict keys are
# what a real file's header holds. (module, class, keyword arguments, family, flow)
TWO_STREAM = {"in_channels": 16, "out_channels": 16, "context_in_dim": 4096, "hidden_size": 3072, "mlp_ratio": 4.0,
              "num_heads": 24, "depth": 19, "depth_single_blocks": 38, "axes_dim": [16, 56, 56], "theta": 10000,
              "patch_size": 2, "qkv_bias": True}
FULL_SIZE = {
    "SDXL": ("comfy.ldm.modules.diffusionmodules.openaimodel", "UNetModel", {
        "image_size": 32, "in_channels": 4, "model_channels": 320, "out_channels": 4, "num_res_blocks": [2, 2, 2],
        "channel_mult": [1, 2, 4], "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_middle": 10,
        "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "context_dim": 2048, "num_head_channels": 64,
        "use_linear_in_transformer": True, "adm_in_channels": 2816, "num_classes": "sequential",
        "use_spatial_transformer": True, "legacy": False}, False),
    "Flux": ("comfy.ldm.flux.model", "Flux", {**TWO_STREAM, "in_channels": 16, "vec_in_dim": 768,
                                              "guidance_embed": True}, True),
    "Chroma": ("comfy.ldm.chroma.model", "Chroma", {**TWO_STREAM, "in_channels": 64, "out_channels": 64, "in_dim": 64,
                                                    "out_dim": 3072, "hidden_dim": 5120, "n_layers": 5}, True),
    "HunyuanVideo": ("comfy.ldm.hunyuan_video.model", "HunyuanVideo", {
        **TWO_STREAM, "depth": 20, "depth_single_blocks": 40, "theta": 256, "patch_size": [1, 2, 2],
        "vec_in_dim": 768, "guidance_embed": True, "byt5": False, "meanflow": False, "use_cond_type_embedding": False,
        "vision_in_dim": None}, True),
    "Wan": ("comfy.ldm.wan.model", "WanModel", {"model_type": "t2v", "dim": 5120, "ffn_dim": 13824, "num_heads": 40,
                                                "num_layers": 40, "in_dim": 16, "out_dim": 16}, True),
    "Qwen-Image": ("comfy.ldm.qwen_image.model", "QwenImageTransformer2DModel", {}, True),
    "Lumina 2": ("comfy.ldm.lumina.model", "NextDiT", {"in_channels": 16, "dim": 2304, "n_layers": 26, "n_heads": 24,
                                                       "n_kv_heads": 8, "cap_feat_dim": 2304, "qk_norm": True,
                                                       "axes_dims": [32, 32, 32], "axes_lens": [300, 512, 512]}, True),
}
# Params that newer ComfyUI versions added to those models (0.8: Flux's and Chroma's text-id axes, Chroma's vec_in_dim;
# 0.33: HunyuanVideo's meanflow_sum), with the values detection gives these full-size models.
NEWER_PARAMS = {"Flux": ("FluxParams", {"txt_ids_dims": []}),
                "Chroma": ("ChromaParams", {"txt_ids_dims": [], "vec_in_dim": None}),
                "HunyuanVideo": ("HunyuanVideoParams", {"meanflow_sum": False})}


def _patcher(diffusion_model: torch.nn.Module):
    """A real ModelPatcher around `diffusion_model`, held as a BaseModel holds it (.diffusion_model)."""
    import comfy.model_patcher

    holder = torch.nn.Module()
    holder.diffusion_model = diffusion_model
    return comfy.model_patcher.ModelPatcher(holder, torch.device("cpu"), torch.device("cpu"))


@pytest.mark.parametrize("family", list(FULL_SIZE))
@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_model_info_names_the_blocks_the_nodes_accept(steer: ModuleType, preview: ModuleType, family: str,
                                                      prefix: str) -> None:
    """Read from the key names of a full-size model (bare, as in diffusion_models/, or inside a checkpoint), the family,
    flow and block names are those SteerPAG/SEG/SkipLayer see on the loaded model (nodes/architectures.py)."""
    import importlib

    import comfy.ops

    module, name, kwargs, flow = FULL_SIZE[family]
    module = importlib.import_module(module)
    if family in NEWER_PARAMS:
        params, neutral = NEWER_PARAMS[family]
        kwargs = kwargs | newer_params(getattr(module, params), neutral)
    model = getattr(module, name)(**kwargs, device="meta", operations=comfy.ops.disable_weight_init)
    architecture = steer.nodes.architectures.architecture_of(_patcher(model))
    keys = [prefix + key for key in model.state_dict()] + ["first_stage_model.decoder.conv_in.weight"]
    info = preview.model_info(keys)
    assert info == {"family": family, "flow": flow, "architecture": architecture.name,
                    "blocks": architecture.describe().split(", ")}
    read = preview.architecture_of_keys(keys)[1]
    assert (read.blocks, read.unet, read.counted_from) == (architecture.blocks, architecture.unet,
                                                           architecture.counted_from)


@pytest.mark.parametrize(("folder", "name", "family", "blocks"), [
    ("checkpoints", "steer_tiny_sd15.safetensors", "SD1.5", ["input.1", "middle.0", "output.0", "output.1"]),
    ("checkpoints", "steer_tiny_sd3.safetensors", "SD3", ["double.0"]),
    ("diffusion_models", "steer_tiny_wan21.safetensors", "Wan", ["double.0"]),
    ("diffusion_models", "steer_tiny_hunyuan_video.safetensors", "HunyuanVideo", ["double.0–1", "single.0–1"]),
])
def test_model_info_of_the_test_bed_files_is_what_the_loaded_model_has(steer: ModuleType, preview: ModuleType,
                                                                        folder: str, name: str, family: str,
                                                                        blocks: list[str]) -> None:
    """The header of each test-bed file, read without loading it, names the blocks of the model ComfyUI's own loader
    makes of that file."""
    import comfy.sd

    path = MODELS / folder / name
    info = preview.model_info(preview.safetensors_keys(str(path)))
    if folder == "checkpoints":
        model = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=False, output_clip=False)[0]
    else:
        model = comfy.sd.load_diffusion_model(str(path))
    architecture = steer.nodes.architectures.architecture_of(model)
    assert (info["family"], info["blocks"]) == (family, blocks) == (info["family"], architecture.describe().split(", "))
    assert info["flow"] == (family != "SD1.5") and info["architecture"] == architecture.name


def test_skip_layer_preview_on_lumina2_refuses_as_the_node_does(preview: ModuleType) -> None:
    """Lumina 2's layers have no block hook: PAG and SEG act there ("auto" = double.7-9), skip-layer is refused."""
    import comfy.ops
    from comfy.ldm.lumina.model import NextDiT

    *_, kwargs, _ = FULL_SIZE["Lumina 2"]
    keys = list(NextDiT(**kwargs, device="meta", operations=comfy.ops.disable_weight_init).state_dict())
    skip = preview.preview("SteerSkipLayer", {"scale": 3.0, "blocks": "auto"}, 5.0, 4, "simple", keys=keys)
    assert "offers no per-block hook" in skip["problem"] and skip["flow"]
    pag = preview.preview("SteerPAG", {"scale": 3.0, "blocks": "auto"}, 5.0, 4, "simple", keys=keys)
    assert pag["problem"] is None and pag["blocks"] == ["double.7", "double.8", "double.9"]


def test_model_info_of_what_is_no_diffusion_model(preview: ModuleType) -> None:
    assert preview.model_info(["first_stage_model.decoder.conv_in.weight", "text_model.embeddings.weight"]) == {
        "family": "unknown", "flow": False, "architecture": None, "blocks": []}


def test_presets_are_the_family_defaults(steer: ModuleType, preview: ModuleType) -> None:
    """Each perturbation node's presets: "auto" first, then every family default of its kind once (families sharing
    one on one line), each a valid block list."""
    defaults = steer.nodes.perturbing.DEFAULT_BLOCKS
    presets = preview.presets()
    assert set(presets) == {"SteerPAG", "SteerSEG", "SteerSkipLayer"}
    for node, kind in (("SteerPAG", "pag"), ("SteerSEG", "seg"), ("SteerSkipLayer", "skip")):
        labels, values = zip(*presets[node], strict=True)
        assert values[0] == "auto" and labels[0].startswith("auto")
        assert sorted(values[1:]) == sorted({blocks[kind] for blocks in defaults.values() if kind in blocks})
        for label, value in presets[node][1:]:
            families = [family for family, blocks in defaults.items() if blocks.get(kind) == value]
            assert label == f"{', '.join(families)}: {value}"
            assert preview.parse_blocks(value)
    assert ["UNet: middle.0", "middle.0"] in presets["SteerSEG"]
    assert not any(value.startswith(("middle", "input", "output")) for _, value in presets["SteerSkipLayer"])


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


@pytest.mark.parametrize("node", ["SteerPAG", "SteerSEG", "SteerSkipLayer"])
@pytest.mark.parametrize("flow", [False, True])
def test_perturbation_preview_is_the_window_comfyui_converts(preview: ModuleType, node: str, flow: bool) -> None:
    """The steps shown are those whose sigma (ComfyUI's own schedule) lies in [percent_to_sigma(end),
    percent_to_sigma(start)] of ComfyUI's model sampling (start 0: no upper bound), narrowed by sigma_start/end; a
    scale of 0, or one the adaptive scale fades to 0, acts on no step."""
    import comfy.samplers
    from comfy.model_sampling import ModelSamplingDiscrete, ModelSamplingDiscreteFlow

    sampling = ModelSamplingDiscreteFlow() if flow else ModelSamplingDiscrete()
    if flow:
        sampling.set_parameters(shift=3.0)
    sigmas = comfy.samplers.calculate_sigmas(sampling, "sgm_uniform", 10).tolist()[:10]
    for start, end, sigma_start, sigma_end in ((0.0, 1.0, -1, -1), (0.0, 0.5, -1, -1), (0.2, 0.7, -1, -1),
                                               (0.01, 0.15, -1, -1), (0.0, 1.0, sigmas[2], sigmas[6])):
        values = {"scale": 3.0, "blocks": "auto", "start_percent": start, "end_percent": end,
                  "sigma_start": sigma_start, "sigma_end": sigma_end}
        result = preview.preview(node, values, 5.0, 10, "sgm_uniform", flow=flow)
        high = sampling.percent_to_sigma(start) if start > 0 else float("inf")
        low = sampling.percent_to_sigma(end)
        high, low = min(high, sigma_start) if sigma_start >= 0 else high, max(low, sigma_end)
        assert result["sigmas"] == pytest.approx(sigmas)
        assert result["active"] == [low <= sigma <= high for sigma in sigmas], values
        assert result["window"] == [start, end] and result["blocks"] == [] and result["auto"]
    assert not any(preview.preview(node, {"scale": 0.0}, 5.0, 10, "normal", flow=flow)["active"])
    faded = preview.preview(node, {"scale": 3.0, "adaptive_scale": 0.2}, 5.0, 10, "normal", flow=flow)["active"]
    assert faded[0] and not faded[-1]  # 3·(1 − 0.2⁴·(1000 − t)) reaches 0 at t = 425
    named = preview.preview(node, {"blocks": "middle.0, joint.1"}, None, None, None)
    assert named["blocks"] == ["middle.0", "double.1"] and named["active"] is None


@pytest.mark.parametrize(("node", "name", "blocks", "shown", "problem"), [
    ("SteerPAG", "steer_tiny_sd15.safetensors", "auto", ["middle.0"], None),
    ("SteerSEG", "steer_tiny_sd15.safetensors", "input.1, output.9", ["input.1", "output.9"],
     "output.9 not in this UNet model; it has input.1, middle.0, output.0, output.1"),
    ("SteerSkipLayer", "steer_tiny_sd15.safetensors", "auto", [], "this model is a UNet"),
    ("SteerSkipLayer", "steer_tiny_sd3.safetensors", "auto", ["double.7", "double.8", "double.9"],
     "double.7, double.8, double.9 not in this SD3 MMDiT model; it has double.0"),
    ("SteerSkipLayer", "steer_tiny_sd3.safetensors", "joint.0", ["double.0"], None),
    ("SteerPAG", "steer_tiny_sd3.safetensors", "auto", ["double.1"], "double.1 not in this SD3 MMDiT model"),
])
def test_perturbation_preview_on_a_model_file_refuses_as_the_node_does(
        steer: ModuleType, preview: ModuleType, steer_nodes: dict[str, type], node: str, name: str, blocks: str,
        shown: list[str], problem: str | None) -> None:
    """With the model file known, the preview shows what "auto" stands for and the node's own refusal of blocks the
    model lacks (the same message the node raises when the loaded file is patched), before anything runs."""
    import comfy.sd

    path = MODELS / "checkpoints" / name
    result = preview.preview(node, {"scale": 3.0, "blocks": blocks}, 5.0, 8, "normal",
                             keys=preview.safetensors_keys(str(path)))
    assert result["blocks"] == shown and result["flow"] == ("sd3" in name)
    assert result["model"]["family"] == ("SD3" if "sd3" in name else "SD1.5")
    model = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=False, output_clip=False)[0]
    values = {spec.id: spec.default for spec in steer_nodes[node].define_schema().inputs if spec.id != "model"}
    if problem is None:
        assert result["problem"] is None
        steer_nodes[node].execute(model, **(values | {"blocks": blocks}))
    else:
        assert problem in result["problem"]
        with pytest.raises(ValueError) as refused:
            steer_nodes[node].execute(model, **(values | {"blocks": blocks}))
        assert result["problem"] in str(refused.value)


def test_preview_refusals(preview: ModuleType) -> None:
    assert preview.preview("SteerCFGSkip", {"mode": "adaptive"}, 7.0, 5, "normal")["active"] is None
    assert preview.preview("SteerCFGSkip", {"mode": "percent", "start_percent": 0.2, "end_percent": 0.6}, None,
                           None, None) == {"active": None, "window": [0.2, 0.6]}
    with pytest.raises(ValueError, match="no preview"):
        preview.preview("SteerGuider", {}, 7.0, 5, "normal")
    with pytest.raises(ValueError, match="block 1"):
        preview.preview("SteerPAG", {"blocks": "middle"}, 7.0, 5, "normal")


@pytest.mark.parametrize("flow", [False, True])
def test_card_sigmas_are_comfyuis(flow: bool) -> None:
    """The template cards (testbed/thumbnails.py, drawn without ComfyUI) use ComfyUI's sigmas, model timesteps and
    percent_to_sigma: SD1.5 / SDXL's normal schedule, SD3's sgm_uniform with shift 3."""
    import comfy.samplers
    from comfy.model_sampling import ModelSamplingDiscrete, ModelSamplingDiscreteFlow

    from testbed import thumbnails

    sampling = ModelSamplingDiscreteFlow() if flow else ModelSamplingDiscrete()
    if flow:
        sampling.set_parameters(shift=thumbnails.FLOW_SHIFT)
    for steps in (8, 25, 40):
        sigmas = comfy.samplers.calculate_sigmas(sampling, "sgm_uniform" if flow else "normal", steps)[:steps]
        card = thumbnails.schedule(steps, flow)
        assert [sigma for sigma, _ in card] == pytest.approx(sigmas.tolist(), rel=1e-4)
        # A step halfway between two of the 1000 timesteps ties; float32 rounding in ComfyUI decides which it takes.
        assert [t for _, t in card] == pytest.approx(sampling.timestep(sigmas).tolist(), rel=1e-4, abs=1.0)
    for percent in (0.0, 0.01, 0.15, 0.3, 0.7, 0.99, 1.0):
        assert thumbnails.percent_to_sigma(percent, flow) == pytest.approx(sampling.percent_to_sigma(percent), rel=1e-4)


def test_cards_show_the_steps_the_previews_show(preview: ModuleType) -> None:
    """Every example's perturbation node acts, on its card, on the steps the node's own preview names."""
    from testbed.examples import EXAMPLES
    from testbed.thumbnails import PERTURBATIONS, per_step

    checked = 0
    for example in EXAMPLES.values():
        graph = example.build(example.family)
        for node in graph.values():
            if node["class_type"] not in PERTURBATIONS:
                continue
            name = PERTURBATIONS[node["class_type"]][1]
            card = [name in perturbed for perturbed in per_step(graph, {}, example.family.flow)["perturbed"]]
            shown = preview.preview(node["class_type"], node["inputs"], 5.0, example.family.steps,
                                    example.family.scheduler, flow=example.family.flow)["active"]
            assert card == shown, example.key
            checked += 1
    assert checked >= 4


@pytest.mark.parametrize("flow", [False, True])
def test_card_windows_are_the_previews_for_any_settings(preview: ModuleType, flow: bool) -> None:
    """Beyond the examples' settings: percent and sigma windows and the adaptive fading give the same steps on a card
    as in the node's preview."""
    from testbed.thumbnails import perturbation, schedule

    sigmas = [sigma for sigma, _ in schedule(12, flow)]
    for values in ({"start_percent": 0.2, "end_percent": 0.6, "sigma_start": -1.0, "sigma_end": -1.0},
                   # between steps: a bound on a step's own σ would depend on float32 rounding
                   {"start_percent": 0.0, "end_percent": 1.0, "sigma_start": (sigmas[3] + sigmas[4]) / 2,
                    "sigma_end": (sigmas[8] + sigmas[9]) / 2},
                   {"start_percent": 0.1, "end_percent": 0.9, "adaptive_scale": 0.2},
                   {"start_percent": 0.0, "end_percent": 0.0}):
        values = {"scale": 2.0, "blocks": "auto"} | values
        card = [perturbation("SteerSEG", values, flow).active(sigma, t) for sigma, t in schedule(12, flow)]
        shown = preview.preview("SteerSEG", values, 5.0, 12, "sgm_uniform" if flow else "normal", flow=flow)
        assert card == shown["active"], values
        assert 0 < sum(card) < 12 or values["end_percent"] == 0.0
        assert shown["sigmas"] == pytest.approx(sigmas, rel=1e-4)
