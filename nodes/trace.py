"""SteerTrace and SteerTracePlot: what guidance did at each step of a run, as a picture (record: guiders/trace.py).

Why two nodes: KSampler users can only be reached through the MODEL, and the sampler's output is what tells a run
apart. SteerTrace puts a recorder on the model (every copy of the model shares it, so patches after it and both
doors — KSampler and any guider — are seen); SteerTracePlot takes the recorder and the LATENT the sampler returned
and draws the run that returned exactly that latent. That is robust to ComfyUI's caching: re-queuing with other
sampler settings re-runs the sampler and changes its LATENT, so the plot re-runs and finds the new run; a cached
sampler output finds its own run again; two samplers on one traced model each find theirs. Without SteerTrace
nothing is recorded or measured.
"""

from __future__ import annotations

from comfy_api.v0_0_2 import io
from PIL import Image

from ..guiders.trace import Recorder, Trace
from .checks import check_inputs, node_label
from .drawing import to_image, trace_chart
from .hooks import TRACE, with_steer

TraceHandle = io.Custom("STEER_TRACE")
NODE, PLOT = "SteerTrace", "SteerTracePlot"


class SteerTrace(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE,
            display_name="Steer Trace",
            category="sampling/steer",
            description="Record what guidance does at each step of the runs of this model (scale, skipped steps, "
                        "rows computed, guidance size, thresholding, PAG). Connect the trace and the sampler's "
                        "LATENT to Steer Trace Plot.",
            inputs=[io.Model.Input("model", tooltip="The model to trace; put it after the Steer patches or before "
                                                    "them, with KSampler or any guider.")],
            outputs=[io.Model.Output(tooltip="The same model, recording its runs."),
                     TraceHandle.Output(display_name="trace", tooltip="The recorder: connect it to Steer Trace Plot.")],
        )

    @classmethod
    def execute(cls, model) -> io.NodeOutput:
        check_inputs(cls, {"model": model})
        traced = with_steer(model)
        recorder = Recorder()
        traced.model_options[TRACE] = recorder
        return io.NodeOutput(traced, recorder)


ROWS = "rows computed (batch x branches)"


def chart(run: Trace, sample: int) -> Image.Image:
    """The picture of one image's run: a panel per measure over the steps, CFG-skipped steps shaded."""
    table = run.per_step(sample)
    series = [("guidance scale (shaded: steps without CFG)", table["scale"]), (ROWS, table["rows"]),
              ("||D_c - D_u||  size of the guidance direction", table["difference"]),
              ("cos(D, D_c)  guided vs cond prediction", table["cosine"]),
              ("thresholding factor ||D after|| / ||D before||", table["threshold_factor"]),
              ("PAG term ||s_p (D_c - D_perturbed)||", table["pag"])]
    title = f"Steer trace, image {sample + 1} of {run.output.shape[0]}, {run.steps} steps (x: step)"
    return trace_chart(title, series, [guided == 0.0 for guided in table["guided"]], bars=(ROWS,))


class SteerTracePlot(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=PLOT,
            display_name="Steer Trace Plot",
            category="sampling/steer",
            description="Draw, for each image of a traced run, the guidance scale per step (CFG-skipped steps "
                        "shaded), the rows computed, ||D_c − D_u||, cos(guided, cond), the thresholding factor and "
                        "the PAG term's size. Measured on x0 predictions in latent space.",
            inputs=[
                TraceHandle.Input("trace", tooltip="The trace output of Steer Trace on the sampler's model."),
                io.Latent.Input("samples", tooltip="The LATENT the sampler returned (KSampler's LATENT, or "
                                                   "SamplerCustomAdvanced's first output): it picks the run to draw."),
            ],
            outputs=[io.Image.Output(tooltip="One chart per image of the run.")],
        )

    @classmethod
    def execute(cls, trace: Recorder, samples: dict) -> io.NodeOutput:
        check_inputs(cls, {"trace": trace, "samples": samples})
        run = trace.find(samples["samples"])
        if run is None:
            raise ValueError(f"{node_label(cls)}: input 'samples': no traced run returned this latent. Connect the "
                             f"LATENT of a sampler whose model comes through {NODE} (KSampler's output, or "
                             "SamplerCustomAdvanced's first output), unchanged; the last 16 runs of the model are "
                             "kept.")
        return io.NodeOutput(to_image([chart(run, sample) for sample in range(run.output.shape[0])]))
