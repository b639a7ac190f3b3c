"""A local web page a teacher can open: choose a video and a checkpoint, see per-student learning emotions.

Run::

    python -m apps.classroom          # the face model shipped in the package (models/weights/)
    python -m apps.classroom --ckpt runs/swin2b_learning_emotions/checkpoints/best.ckpt
    # then open http://127.0.0.1:7860

The page (Gradio) takes a video (upload, or a path / webcam index / stream URL typed in) and a checkpoint, runs
:func:`apps.classroom_api.analyze_video` (a video file: the inference pipeline, :mod:`pipelines.classroom`), shows
its progress (frames done, ETA) with a Cancel button, then the annotated video, the per-student timelines, the
summary (plot and table), the one-page report (``report.html``, opens without the app) and the per-face CSV. The
class names are the checkpoint's (the shipped model: FER2013's seven basic emotions). Bad input (no face, a
corrupt video, a source that is no video, a foreign checkpoint, an output root that is a file, ...) is shown as a
message on the page, never as a traceback. Every analysis writes to its own new folder under ``--output-root``. The
server listens on 127.0.0.1 only, with Gradio's analytics off.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from apps.classroom_api import DEFAULT_CONFIG, analyze_video, default_every_n_frames

log = logging.getLogger(__name__)

__all__ = ["analyze_for_page", "build_app", "main"]


def analyze_for_page(
    upload: str | None,
    typed_source: str | None,
    ckpt: str | None,
    every_n_frames: float,
    min_face_size: float,
    config: str | Path = DEFAULT_CONFIG,
    output_root: str | Path = "runs/classroom",
    progress: Callable[[int, int | None, float | None], bool | None] | None = None,
    cancel: threading.Event | None = None,
) -> tuple:
    """The page's action: ``(status markdown, annotated video, timeline png, summary png, summary table, csv,
    report html)``. ``progress``/``cancel``: see :func:`apps.classroom_api.analyze_video`."""
    import pandas as pd

    source = upload or (typed_source or "").strip()
    empty = (None, None, None, pd.DataFrame(), None, None)
    if not source:
        return ("**Choose a video** (upload one, or type a path, webcam index or stream URL).", *empty)
    ckpt = str(ckpt).strip() if ckpt and str(ckpt).strip() else None  # none: the shipped face model
    root = Path(output_root)
    if root.exists() and not root.is_dir():
        msg = (f"**Cannot write the results:** the output folder `{root}` is a file, not a folder "
               "(start the page with another `--output-root`).")
        return (msg, *empty)
    stem = Path(str(source)).stem or "source"
    out = root / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    try:
        df = analyze_video(source, ckpt, out, config=config, every_n_frames=int(every_n_frames),
                           min_face_size=int(min_face_size), max_frames=300, progress=progress, cancel=cancel)
    except (OSError, ValueError) as err:  # bad input or an unwritable folder: a message naming the file
        return (f"**Could not analyse:** {err}", *empty)
    except Exception as err:  # the page shows a message, never a traceback; the log keeps it
        log.exception("Classroom page: the analysis of %s failed", source)
        return (f"**The analysis failed:** {type(err).__name__}: {err} (the details are in the server log)", *empty)
    files = {Path(f).name: f for f in df.attrs["files"]}
    summary = df.attrs["summary"]
    timeline = next((f for n, f in files.items() if n.startswith("timeline_")), None)
    video = next((f for n, f in files.items() if n.startswith("annotated_")), None)
    notes = df.attrs["notes"]
    classes = [c.removeprefix("prob_") for c in df.columns if c.startswith("prob_")]
    cancelled = "**Cancelled**: partial results. " if df.attrs.get("cancelled") else ""
    status = (f"{cancelled}**{summary.shape[0]} student(s)**, {len(df)} face observations in "
              f"{df.attrs.get('frames_analysed') or 'the frames'}, written to `{out}`."
              + (f" Classes (the model's): {', '.join(classes)}." if classes else "")
              + ("".join(f"\n\n- {n}" for n in notes) if notes else ""))
    table = summary.round(3) if len(summary) else summary
    return (status, video, timeline, files.get("summary.png"), table, files.get("emotions.csv"),
            files.get("report.html"))


def build_app(default_ckpt: str | None = None, config: str | Path = DEFAULT_CONFIG,
              output_root: str | Path = "runs/classroom"):
    """The Gradio Blocks page (not launched)."""
    import gradio as gr

    cancels: dict[str, threading.Event] = {}  # one per browser session: its Cancel button stops its analysis

    def run(upload, typed, ckpt, stride, min_face, request: gr.Request, progress=gr.Progress()):  # noqa: B008
        stop = cancels[request.session_hash] = threading.Event()

        def report(done: int, total: int | None, eta: float | None) -> None:
            eta_text = f", about {eta:.0f} s left" if eta is not None else ""
            progress((done, total) if total else None, desc=f"analysed {done} of {total or '?'} frames{eta_text}",
                     unit="frames")

        try:
            return analyze_for_page(upload, typed, ckpt, stride, min_face, config, output_root, report, stop)
        finally:
            cancels.pop(request.session_hash, None)

    # the module's annotations are strings (``from __future__ import annotations``) and gradio is imported here, not
    # at module level: give Gradio the class itself, which it injects by type
    run.__annotations__["request"] = gr.Request

    def cancel(request: gr.Request) -> str:
        stop = cancels.get(request.session_hash)
        if stop is None:
            return "Nothing to cancel."
        stop.set()
        return "Cancelling: the frames analysed so far are kept."

    cancel.__annotations__["request"] = gr.Request

    with gr.Blocks(title="Classroom emotion analysis") as demo:
        gr.Markdown("# Classroom emotion analysis\nOne timeline per student: faces are detected (MTCNN), tracked "
                    "across frames and classified by the checkpoint's model into its own classes (no checkpoint: "
                    "the shipped FER2013 model, seven basic emotions).")
        with gr.Row():
            upload = gr.Video(label="Video (upload)", sources=["upload"], elem_id="upload")
            with gr.Column():
                typed = gr.Textbox(label="…or a video path, webcam index (0) or stream URL", elem_id="source")
                ckpt = gr.Textbox(label="Checkpoint (.ckpt; empty: the shipped FER2013 model)", value=default_ckpt or "",
                                  elem_id="ckpt")
                stride = gr.Slider(1, 30, value=default_every_n_frames(config), step=1,
                                   label="Analyse one frame in n", elem_id="stride")
                min_face = gr.Slider(12, 200, value=20, step=1, label="Smallest face (pixels)", elem_id="min_face")
                with gr.Row():
                    button = gr.Button("Analyze", variant="primary", elem_id="analyze")
                    stop_button = gr.Button("Cancel", variant="stop", elem_id="cancel")
        status = gr.Markdown(elem_id="status")
        cancel_note = gr.Markdown(elem_id="cancel_note")
        with gr.Row():
            video = gr.Video(label="Annotated video", elem_id="annotated", interactive=False)
            summary_png = gr.Image(label="Summary: share of time per emotion", elem_id="summary_png",
                                   type="filepath", interactive=False)
        timeline = gr.Image(label="Per-student timelines", elem_id="timeline", type="filepath", interactive=False)
        table = gr.Dataframe(label="Per-student summary", elem_id="summary_table", interactive=False)
        with gr.Row():
            csv = gr.File(label="Download the per-face CSV", elem_id="csv", interactive=False)
            report_html = gr.File(label="The one-page report (opens without this app)", elem_id="report",
                                  interactive=False)
        button.click(run, [upload, typed, ckpt, stride, min_face],
                     [status, video, timeline, summary_png, table, csv, report_html])
        stop_button.click(cancel, None, cancel_note)
    return demo


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Local web page for the classroom learning-emotion analysis")
    ap.add_argument("--ckpt", default=None, help="checkpoint shown as the default on the page (empty: the face "
                    "model shipped in the package, models/weights/)")
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="prediction config (detector, tracking, frame stride, writer; the net comes from the checkpoint)")
    ap.add_argument("--output-root", default="runs/classroom", help="each analysis writes a new folder here")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=7860)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if Path(args.output_root).exists() and not Path(args.output_root).is_dir():
        ap.error(f"--output-root {args.output_root!r} is a file, not a folder")
    Path(args.output_root).mkdir(parents=True, exist_ok=True)
    demo = build_app(args.ckpt, args.config, args.output_root)
    demo.launch(server_name=args.host, server_port=args.port, allowed_paths=[str(Path(args.output_root).resolve())])


if __name__ == "__main__":
    main()
