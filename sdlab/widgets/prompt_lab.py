"""PromptLab: write a prompt, press Generate, keep a gallery; reuse settings or sweep around them.

    lab = PromptLab(pipe)
    lab                               # in a notebook cell
    lab.prompt.value = "a large red circle on a blue background"
    lab.generate_button.click()       # or lab.generate(); the images are in lab.last_result

Generation goes through `sdlab.generate` (the one path). The Generate and Run sweep buttons run on
a thread (`background=True`, the default) so Cancel, Kernel > Interrupt and other cells stay live;
Cancel or Interrupt stops the run at its next denoising step and it is recorded as cancelled
(`state`), nothing of it saved. A run holds the pipeline from start to end: a cell using it waits,
and a run started while a cell holds it shows "waiting for the pipeline" until its turn.
`generate()` and `run_sweep()` called from code run in the caller's thread. Every image is saved (PNG with its record) into the
run folder shown in the widget (`out_dir`, by default runs/promptlab/<date>; None or unticking
"save" turns it off), and a new PromptLab on the same folder shows the earlier images again.
Style and negative-prompt presets are applied when Generate is pressed (the final prompt is shown
under the prompt and recorded with every image); the token counter counts the final prompt.
"""

from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from ..backends import as_backend
from ..executors import Interrupted
from ._common import (
    DEFAULT,
    PIXELATED_STYLE,
    ProgressFeed,
    error_text,
    image_widget,
    or_none,
    params_html,
    replace_children,
    status_html,
)
from ._runs import WidgetRun
from ._viewer import ImageViewer

NO_PRESET = "(none)"
# The run folder when none is given: one per day, relative to the notebook's folder.
_DEFAULT_OUT_DIR = object()
# The keyword arguments of `sdlab.generate` that "copy as Python" writes, in this order.
_CODE_KEYS = (
    "negative_prompt",
    "seed",
    "guidance_scale",
    "num_inference_steps",
    "scheduler",
    "width",
    "height",
    "clip_skip",
    "variation_seed",
    "variation_strength",
)


def default_out_dir() -> Path:
    """runs/promptlab/<today>: where PromptLab saves when no `out_dir` is given."""
    return Path("runs") / "promptlab" / datetime.date.today().isoformat()


def _prompts_module():
    """sdlab.prompts if it is importable, else None (its controls are then hidden)."""
    try:
        from .. import prompts
    except Exception:  # noqa: BLE001 - a missing or broken optional module only hides controls
        return None
    return prompts


def _number_list(text: str, name: str, kind: str) -> list:
    """Values typed in the sweep form: comma lists or A1111 ranges ("1-4", "3-7 (+2)")."""
    from ..axes import parse_values

    values = parse_values(text, kind, name=name)
    if not values:
        raise ValueError(f"the sweep's `{name}` values are empty")
    return values


class PromptLab(widgets.VBox):
    """An interactive prompt lab for one pipeline (or backend).

    Controls (public, so code and tests can set them): `prompt`, `negative_prompt`,
    `style_preset`, `negative_preset`, `seed`, `lock_seed`, `guidance_scale`,
    `num_inference_steps`, `scheduler`, `width`, `height`, `clip_skip` (0 = none),
    `num_images`, `save_images`, `display_size` (the longer side of the results, px),
    `generate_button`, `cancel_button`, `png_path` and `png_button` (A1111's PNG Info: a PNG's
    parameters into the controls).
    State: `state` ("ready", "waiting" for the pipeline, "running", "done", "cancelled",
    "error"), `last_result` (the last `GenerationResult`), `history` (recent images with their
    records, newest first; reloaded from `out_dir`), `error` (the last error or None),
    `cancelled` (the last run was cancelled), `status` (an HTML label), `progress` (an
    IntProgress), `copy_text` (the text of the last "A1111 text"/"Python" click), `viewer` (one
    image large: `enlarge(i)` or a thumbnail's "enlarge" button), `thread` (the last run's thread),
    `sweep_spec` and `last_sweep` (the sweep form's last run).
    """

    def __init__(
        self,
        pipe: Any,
        *,
        prompt: str = "",
        negative_prompt: str = "",
        seed: int = 0,
        out_dir: Any = _DEFAULT_OUT_DIR,
        sweep_dir: str | None = None,
        max_history: int = 8,
        background: bool = True,
    ):
        from ..schedulers import scheduler_names

        self.pipe = pipe
        self.backend = as_backend(pipe)
        self.out_dir = default_out_dir() if out_dir is _DEFAULT_OUT_DIR else out_dir
        self.background = background
        self._run = WidgetRun("sdlab-promptlab")
        self.state = "ready"
        self.cancelled = False
        self.sweep_dir = sweep_dir
        self.max_history = max_history
        self.last_result = None
        self.history: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self.sweep_spec: dict[str, Any] | None = None
        self.last_sweep = None
        self.explorer = None
        defaults = self.backend.defaults
        multiple = int(self.backend.size_multiple)
        wide = widgets.Layout(width="100%")

        # 1. prompt, presets, token budget
        self.prompt = widgets.Textarea(
            value=prompt,
            placeholder="a large red circle on a blue background",
            description="Prompt",
            layout=widgets.Layout(width="100%", height="4em"),
        )
        self.negative_prompt = widgets.Textarea(
            value=negative_prompt or (defaults.negative_prompt or ""),
            placeholder="what the image should not show",
            description="Negative",
            layout=widgets.Layout(width="100%", height="3em"),
        )
        self._prompts = _prompts_module()
        styles, negatives = self._preset_names()
        self.style_preset = widgets.Dropdown(options=[NO_PRESET] + styles, value=NO_PRESET, description="Style")
        self.negative_preset = widgets.Dropdown(
            options=[NO_PRESET] + negatives, value=NO_PRESET, description="Neg. preset"
        )
        presets_row = widgets.HBox([self.style_preset, self.negative_preset])
        if not styles and not negatives:
            presets_row.layout.display = "none"
        self.final_prompt = widgets.HTML(layout=wide)
        self.tokens = widgets.HTML(layout=wide)
        self.tokens.add_class("sdlab-tokens")

        # 2. sampling controls
        self.seed = widgets.IntText(value=seed, description="Seed", layout=widgets.Layout(width="220px"))
        self.lock_seed = widgets.ToggleButton(
            value=True,
            description="locked",
            icon="lock",
            tooltip="locked: use this seed; unlocked: a new random seed each time",
        )
        self.new_seed_button = widgets.Button(description="new seed", icon="random", tooltip="draw a random seed now")
        self.guidance_scale = widgets.FloatSlider(
            value=float(defaults.guidance_scale),
            min=0.0,
            max=max(20.0, float(defaults.guidance_scale)),
            step=0.5,
            description="CFG scale",
            continuous_update=False,
        )
        self.num_inference_steps = widgets.IntSlider(
            value=int(defaults.num_inference_steps),
            min=1,
            max=max(100, int(defaults.num_inference_steps)),
            description="Steps",
            continuous_update=False,
        )
        names = scheduler_names(getattr(self.backend, "pipe", None))
        default_name = defaults.scheduler or "model's own"
        self.scheduler = widgets.Dropdown(
            options=[(f"default ({default_name})", DEFAULT)] + [(n, n) for n in names],
            value=DEFAULT,
            description="Scheduler",
        )
        self.width = widgets.IntText(
            value=int(defaults.width), step=multiple, description="Width", layout=widgets.Layout(width="180px")
        )
        self.height = widgets.IntText(
            value=int(defaults.height), step=multiple, description="Height", layout=widgets.Layout(width="180px")
        )
        self.num_images = widgets.IntSlider(value=1, min=1, max=8, description="Images", continuous_update=False)
        self.clip_skip = widgets.IntText(
            value=0,
            min=0,
            description="Clip skip",
            tooltip="diffusers' clip_skip (A1111's 'Clip skip: 2' is 1 here); 0 = none",
            layout=widgets.Layout(width="180px"),
        )

        # 3. run, progress, status, images, errors, gallery, sweep form
        self.generate_button = widgets.Button(description="Generate", button_style="primary", icon="play")
        self.generate_button.add_class("sdlab-generate")
        self.cancel_button = widgets.Button(description="Cancel", icon="stop", disabled=True)
        self.cancel_button.add_class("sdlab-cancel")
        self.save_images = widgets.Checkbox(value=self.out_dir is not None, description="save", indent=False)
        self.save_images.disabled = self.out_dir is None
        self.run_folder = widgets.HTML()
        self.run_folder.add_class("sdlab-run-folder")
        self.png_path = widgets.Text(description="PNG Info", placeholder="path of a PNG (sdlab's or A1111's)")
        self.png_button = widgets.Button(description="load", icon="upload", tooltip="its parameters into the controls")
        self.copy_text = widgets.Textarea(layout=widgets.Layout(width="100%", height="6em", display="none"))
        self.copy_text.add_class("sdlab-copy-text")
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="", layout=widgets.Layout(width="300px"))
        self._feed = ProgressFeed(self.progress)
        self.status = widgets.HTML(value=status_html("ready"))
        self.status.add_class("sdlab-status")
        self.display_size = widgets.Dropdown(
            options=[("128 px", 128), ("256 px", 256), ("512 px", 512)], value=256, description="Show at"
        )
        self.images = widgets.HBox(layout=widgets.Layout(flex_flow="row wrap"))
        self.images.add_class("sdlab-images")
        self.viewer = ImageViewer()
        self.output = widgets.Output()
        self.gallery = widgets.VBox()
        self.gallery.add_class("sdlab-gallery")
        self._build_sweep_form()

        self.new_seed_button.on_click(lambda _: self._draw_seed())
        self.lock_seed.observe(self._on_lock, names="value")
        self.generate_button.on_click(lambda _: self._on_generate())
        self.cancel_button.on_click(lambda _: self.cancel())
        self.png_button.on_click(lambda _: self.load_png(self.png_path.value))
        self.save_images.observe(lambda _change: self._show_run_folder(), names="value")
        self.display_size.observe(lambda _change: self._show_results(), names="value")
        self._show_run_folder()
        for control in (self.prompt, self.style_preset, self.negative_preset):
            control.observe(lambda _change: self._update_prompt_info(), names="value")
        self._update_prompt_info()

        super().__init__(
            children=[
                widgets.HTML(PIXELATED_STYLE),
                self.prompt,
                self.negative_prompt,
                presets_row,
                self.final_prompt,
                self.tokens,
                widgets.HBox([self.seed, self.lock_seed, self.new_seed_button]),
                widgets.HBox([self.guidance_scale, self.num_inference_steps]),
                widgets.HBox([self.scheduler, self.num_images]),
                widgets.HBox([self.width, self.height, self.clip_skip]),
                widgets.HBox([self.png_path, self.png_button]),
                widgets.HBox([self.generate_button, self.cancel_button, self.progress, self.status]),
                widgets.HBox([self.save_images, self.run_folder, self.display_size]),
                self.images,
                self.output,
                self.copy_text,
                self.viewer,
                widgets.HTML("<b>Recent</b> (newest first)"),
                self.gallery,
                self.sweep_form,
                self.sweep_view,
            ]
        )
        self.add_class("sdlab-promptlab")
        self._load_history()

    # ------------------------------------------------------------ presets and token budget

    def _preset_names(self) -> tuple[list[str], list[str]]:
        if self._prompts is None or not hasattr(self._prompts, "list_presets"):
            return [], []
        try:
            presets = list(self._prompts.list_presets())
        except Exception:  # noqa: BLE001 - an unreadable preset file only hides the control
            return [], []
        styles = [p.name for p in presets if getattr(p, "style", None) or getattr(p, "quality", None)]
        negatives = [p.name for p in presets if getattr(p, "negative_prompt", None)]
        return styles, negatives

    def final_prompts(self) -> tuple[str, str | None]:
        """The prompt and negative prompt Generate would use (presets applied)."""
        prompt = self.prompt.value.strip()
        negative = self.negative_prompt.value.strip() or None
        if self.style_preset.value != NO_PRESET and prompt:
            prompt = self._prompts.build_prompt(prompt, preset=self.style_preset.value)
        if self.negative_preset.value != NO_PRESET:
            negative = self._prompts.build_negative_prompt(self.negative_preset.value, extra=negative)
        return prompt, negative

    def _update_prompt_info(self) -> None:
        try:
            prompt, negative = self.final_prompts()
        except Exception as e:  # noqa: BLE001
            self.final_prompt.value = status_html(error_text(e), "error")
            return
        presets = self.style_preset.value != NO_PRESET or self.negative_preset.value != NO_PRESET
        if presets:
            import html

            neg = f"<br><i>negative:</i> {html.escape(negative)}" if negative else ""
            self.final_prompt.value = f"<small><i>final prompt:</i> {html.escape(prompt)}{neg}</small>"
        else:
            self.final_prompt.value = ""
        self._update_tokens(prompt)

    def _update_tokens(self, prompt: str) -> None:
        budget_fn = getattr(self._prompts, "token_budget", None) if self._prompts is not None else None
        pipe = getattr(self.backend, "pipe", None)
        if budget_fn is None or pipe is None:
            self.tokens.layout.display = "none"
            self.token_budget = None
            return
        try:
            budget = budget_fn(pipe, prompt or "")
        except Exception:  # noqa: BLE001 - the counter is a help, never a failure
            self.tokens.layout.display = "none"
            self.token_budget = None
            return
        import html

        self.token_budget = budget
        lines = []
        for count in getattr(budget, "counts", ()):
            try:
                text = f"{count.label}: {count.count}/{count.limit} tokens"
                if getattr(count, "chunks", 1) > 1:  # read in 77-token chunks (A1111): nothing dropped
                    text = f"{count.label}: {count.count} tokens in {count.chunks} chunks of {count.limit}"
            except AttributeError:
                text = count.summary() if hasattr(count, "summary") else str(count)
            line = html.escape(text)
            if getattr(count, "truncated", False):
                dropped = getattr(count, "dropped_text", "") or " ".join(getattr(count, "dropped_words", ()))
                line = f"<span style='color:#b00020'>{line}, dropped: <s>{html.escape(dropped)}</s></span>"
            lines.append(line)
        self.tokens.value = "<small>" + "<br>".join(lines) + "</small>"
        self.tokens.layout.display = None

    # ------------------------------------------------------------ seeds

    def _draw_seed(self) -> int:
        from ..request import random_seed

        self.seed.value = random_seed()
        return self.seed.value

    def _on_lock(self, change) -> None:
        self.lock_seed.description = "locked" if change["new"] else "random"
        self.lock_seed.icon = "lock" if change["new"] else "unlock"

    # ------------------------------------------------------------ generating

    def current_params(self) -> dict[str, Any]:
        """The keyword arguments of `sdlab.generate` that the controls describe."""
        prompt, negative = self.final_prompts()
        if not prompt:
            raise ValueError("`prompt` is empty: write what the image should show")
        return {
            "prompt": prompt,
            "negative_prompt": negative,
            "seed": int(self.seed.value),
            "guidance_scale": float(self.guidance_scale.value),
            "num_inference_steps": int(self.num_inference_steps.value),
            "scheduler": or_none(self.scheduler.value),
            "width": int(self.width.value),
            "height": int(self.height.value),
            "num_images": int(self.num_images.value),
            "clip_skip": int(self.clip_skip.value) or None,
        }

    def _on_generate(self) -> None:
        """The Generate button: on a thread (`background`), so Cancel and other cells stay live."""
        self._start(self.generate)

    def _start(self, work) -> None:
        if not self.background:
            self._run.cancel_event.clear()
            work()
        elif not self._run.start(work):
            self.status.value = status_html("still running: press Cancel or wait", "busy")

    @property
    def thread(self):
        """The thread of the last Generate or Run sweep (None before the first)."""
        return self._run.thread

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the running Generate or sweep (if any) to end."""
        self._run.wait(timeout)

    def cancel(self) -> None:
        """Stop the running generation or sweep at its next denoising step (nothing of it is kept)."""
        if self.state in ("running", "waiting"):
            self._run.cancel()
            self.status.value = status_html("cancelling at the next step…", "busy")

    def _progress(self, info: dict[str, Any]) -> None:
        self._run.check("the run")
        self._feed(info)

    def _waiting(self) -> None:
        self.state = "waiting"
        self.status.value = status_html(
            "waiting for the pipeline: a cell or another widget is using it (Cancel stops waiting)", "busy"
        )

    def _begin(self, text: str, total: int = 1) -> None:
        self.error = None
        self.cancelled = False
        self.state = "running"
        self.output.clear_output()
        self.generate_button.disabled = self.sweep_button.disabled = True
        self.cancel_button.disabled = False
        self._feed.reset(total)
        self.status.value = status_html(text, "busy")

    def _end(self) -> None:
        self.generate_button.disabled = self.sweep_button.disabled = False
        self.cancel_button.disabled = True
        self._run.cancel_event.clear()

    def _cancelled(self) -> None:
        self.cancelled = True
        self.state = "cancelled"
        self.status.value = status_html(
            f"cancelled at step {self.progress.value} of {self.progress.max}: nothing of it saved", "info"
        )

    def generate(self):
        """Generate with the current controls; returns the `GenerationResult`, or None on error
        or cancel (the error is shown in the widget and kept in `error`; a cancel sets
        `cancelled` and `state`). The images are saved into `out_dir` unless saving is off."""
        from ..generation import generate

        if not self.lock_seed.value:
            self._draw_seed()
        self._begin("generating…", int(self.num_inference_steps.value))
        start = time.perf_counter()
        try:
            params = self.current_params()
            with self._run.pipeline_turn(self.backend, on_wait=self._waiting):
                self.state = "running"
                self.status.value = status_html("generating…", "busy")
                start = time.perf_counter()
                result = generate(self.pipe, progress=self._progress, **params)
                if self.out_dir is not None and self.save_images.value:
                    result.save(self.out_dir)
        except (Interrupted, KeyboardInterrupt):
            self._cancelled()
            return None
        except Exception as e:  # noqa: BLE001 - shown in the widget; the kernel lives on
            return self._fail(e)
        finally:
            self._end()
        seconds = time.perf_counter() - start
        self.last_result = result
        self.progress.value = self.progress.max
        for i, (image, record) in enumerate(zip(result.images, result.records)):
            path = result.paths[i] if i < len(result.paths) else None
            self.history.insert(0, {"image": image, "params": record, "path": path})
        del self.history[self.max_history :]
        self._show_results()
        self._render_gallery()
        seeds = ", ".join(str(s) for s in result.seeds)
        saved = f", saved in {self.out_dir}" if result.paths else ""
        self.state = "done"
        self.status.value = status_html(f"done: {len(result)} image(s) in {seconds:.1f} s (seed {seeds}){saved}", "ok")
        return result

    def _show_results(self) -> None:
        """The last result's images at `display_size`, each with a button to see it large."""
        if self.last_result is None:
            return
        n = len(self.last_result.images)
        cells = []
        for i, image in enumerate(self.last_result.images):
            entry = n - 1 - i  # the history holds the newest first: the last image is entry 0
            enlarge = widgets.Button(description="enlarge", icon="search-plus", layout=widgets.Layout(width="110px"))
            enlarge.add_class("sdlab-enlarge")
            enlarge.on_click(lambda _b, entry=entry: self.enlarge(entry))
            cells.append(
                widgets.VBox([image_widget(image, box=int(self.display_size.value), css_class="sdlab-result"), enlarge])
            )
        replace_children(self.images, cells)

    # ------------------------------------------------------------ run folder

    def _show_run_folder(self) -> None:
        import html

        if self.out_dir is None or not self.save_images.value:
            self.run_folder.value = "<small>not saving</small>"
        else:
            folder = html.escape(str(Path(self.out_dir)))
            self.run_folder.value = f"<small>saving every image (PNG with its record) in <code>{folder}</code></small>"

    def _load_history(self) -> None:
        """The newest `max_history` images of `out_dir` (a run folder of an earlier kernel)."""
        from PIL import Image

        from ..metadata import read_params

        if self.out_dir is None or not Path(self.out_dir).is_dir():
            return
        for path in sorted(Path(self.out_dir).glob("*.png"), reverse=True)[: self.max_history]:
            try:
                params = read_params(path)
                with Image.open(path) as im:
                    image = im.convert("RGB")
            except Exception:  # noqa: BLE001 - a foreign or broken file is skipped, not fatal
                continue
            params.pop("source", None)
            self.history.append({"image": image, "params": params, "path": path})
        if self.history:
            self._render_gallery()
            self.status.value = status_html(f"{len(self.history)} earlier image(s) from {self.out_dir}", "info")

    def _fail(self, error: BaseException):
        self.error = error
        self.state = "error"
        self.status.value = status_html(error_text(error), "error")
        with self.output:
            print(error_text(error))
        return None

    # ------------------------------------------------------------ gallery

    def _render_gallery(self) -> None:
        cards = []
        for i, entry in enumerate(self.history):
            buttons = []
            for label, icon, tooltip, action in (
                ("reuse", "undo", "fill the controls with these settings", self.reuse),
                ("sweep", "th", "a seeds x CFG sweep around these settings", self.send_to_sweep),
                ("A1111 text", "copy", "A1111's parameters text, to copy", self.show_a1111_text),
                ("Python", "code", "Python that makes this image again, to copy", self.show_python_code),
            ):
                button = widgets.Button(
                    description=label, icon=icon, tooltip=tooltip, layout=widgets.Layout(width="110px")
                )
                button.on_click(lambda _b, i=i, action=action: action(i))
                buttons.append(button)
            caption = widgets.HTML(f"<small>{_caption(entry['params'])}</small>")
            caption.add_class("sdlab-caption")
            enlarge = widgets.Button(description="enlarge", icon="search-plus", layout=widgets.Layout(width="110px"))
            enlarge.add_class("sdlab-enlarge")
            enlarge.on_click(lambda _b, i=i: self.enlarge(i))
            card = widgets.HBox(
                [
                    widgets.VBox([image_widget(entry["image"], box=128, css_class="sdlab-thumb"), caption, enlarge]),
                    widgets.HTML(params_html(entry["params"]), layout=widgets.Layout(width="420px")),
                    widgets.VBox(buttons),
                ]
            )
            card.add_class("sdlab-card")
            cards.append(card)
        replace_children(self.gallery, cards)

    def enlarge(self, entry: int = 0) -> None:
        """Show gallery entry `entry` (0 = newest) large, with its record and its buttons."""
        image, params = self.history[entry]["image"], self._entry_params(entry)
        path = self.history[entry].get("path")
        self.viewer.show(
            image,
            params,
            title=f"seed {params.get('seed')}" + (f" · {Path(path).name}" if path else ""),
            actions=[
                ("reuse", "undo", "fill the controls with these settings", lambda: self.reuse(params)),
                ("sweep", "th", "a seeds x CFG sweep around these settings", lambda: self.send_to_sweep(params)),
                ("A1111 text", "copy", "A1111's parameters text, to copy", lambda: self.show_a1111_text(params)),
                ("Python", "code", "Python that makes this image again", lambda: self.show_python_code(params)),
            ],
        )

    # ------------------------------------------------------------ copying and PNG Info

    def a1111_text(self, entry: int | dict = 0) -> str:
        """A1111's parameters text of gallery entry `entry` (0 = newest)."""
        from ..metadata import infotext

        return infotext(self._entry_params(entry))

    def python_code(self, entry: int | dict = 0) -> str:
        """Python that makes gallery entry `entry` again with `sdlab.generate` on `pipe`."""
        params = self._entry_params(entry)
        lines = ["import sdlab", "", "result = sdlab.generate(", "    pipe,", f"    {params['prompt']!r},"]
        for key in _CODE_KEYS:
            if params.get(key) is not None and not (
                key.startswith("variation") and not params.get("variation_strength")
            ):
                lines.append(f"    {key}={params[key]!r},")
        for key, value in (params.get("pipeline_kwargs") or {}).items():  # e.g. DDIM's eta
            lines.append(f"    {key}={value!r},")
        lines += [")", "image = result.image"]
        return "\n".join(lines) + "\n"

    def _show_copy(self, text: str, what: str) -> str:
        self.copy_text.value = text
        self.copy_text.layout.display = None
        self.status.value = status_html(f"{what} below: select it and copy", "info")
        return text

    def show_a1111_text(self, entry: int | dict = 0) -> str:
        return self._show_copy(self.a1111_text(entry), "A1111 text")

    def show_python_code(self, entry: int | dict = 0) -> str:
        return self._show_copy(self.python_code(entry), "Python code")

    def load_png(self, path: str | Path) -> dict[str, Any] | None:
        """A1111's PNG Info: the parameters a PNG carries (sdlab's record or A1111's text) into
        the controls. Returns them, or None on error (shown in the widget)."""
        from ..metadata import read_params

        self.error = None
        try:
            if not str(path).strip():
                raise ValueError("`png_path` is empty: give the path of a PNG")
            params = read_params(Path(str(path).strip()).expanduser())
        except Exception as e:  # noqa: BLE001
            return self._fail(e)
        self.reuse(params)
        self.status.value = status_html(f"parameters of {Path(str(path)).name} loaded (seed {self.seed.value})", "ok")
        return params

    def _entry_params(self, entry: int | dict) -> dict[str, Any]:
        if isinstance(entry, int):
            if not 0 <= entry < len(self.history):
                raise ValueError(f"no gallery entry {entry}; there are {len(self.history)}")
            return dict(self.history[entry]["params"])
        return dict(entry)

    def reuse(self, entry: int | dict = 0) -> dict[str, Any]:
        """Fill the controls with the parameters of gallery entry `entry` (0 = newest) or a record."""
        params = self._entry_params(entry)
        with self.hold_sync():
            self.style_preset.value = NO_PRESET  # the recorded prompt already carries its preset
            self.negative_preset.value = NO_PRESET
            self.prompt.value = params.get("prompt") or ""
            self.negative_prompt.value = params.get("negative_prompt") or ""
            self.seed.value = int(params.get("seed", self.seed.value))
            self.lock_seed.value = True
            if params.get("guidance_scale") is not None:
                g = float(params["guidance_scale"])
                self.guidance_scale.max = max(self.guidance_scale.max, g)
                self.guidance_scale.value = g
            if params.get("num_inference_steps") is not None:
                n = int(params["num_inference_steps"])
                self.num_inference_steps.max = max(self.num_inference_steps.max, n)
                self.num_inference_steps.value = n
            options = [value for _, value in self.scheduler.options]
            self.scheduler.value = params.get("scheduler") if params.get("scheduler") in options else DEFAULT
            self.width.value = int(params.get("width", self.width.value))
            self.height.value = int(params.get("height", self.height.value))
            self.clip_skip.value = int(params.get("clip_skip") or 0)
            self.num_images.value = 1
        self.status.value = status_html(f"settings of seed {self.seed.value} restored", "info")
        return params

    # ------------------------------------------------------------ sweeps

    def _build_sweep_form(self) -> None:
        self.sweep_seeds = widgets.Text(description="Seeds", placeholder="1-4 or 1, 5, 9")
        self.sweep_guidance = widgets.Text(description="CFG scales", placeholder="3, 5, 7")
        self.sweep_button = widgets.Button(description="Run sweep", icon="th", button_style="info")
        self.sweep_button.add_class("sdlab-run-sweep")
        self.sweep_button.on_click(lambda _: self._start(self.run_sweep))
        self.sweep_form = widgets.VBox(
            [
                widgets.HTML("<b>Sweep</b> around the chosen settings (seeds x CFG scale)"),
                widgets.HBox([self.sweep_seeds, self.sweep_guidance, self.sweep_button]),
            ]
        )
        self.sweep_form.layout.display = "none"
        self.sweep_view = widgets.VBox()

    def send_to_sweep(self, entry: int | dict = 0, *, seeds: int = 3) -> dict[str, Any]:
        """A seeds x guidance sweep spec around gallery entry `entry` (or a record): stored in
        `sweep_spec` (keyword arguments of `sdlab.sweep`) and shown in the sweep form."""
        params = self._entry_params(entry)
        seed = int(params["seed"])
        g = float(params["guidance_scale"])
        guidance = sorted({max(0.0, g - 2.0), g, g + 2.0})
        self.sweep_spec = {
            "prompt": params["prompt"],
            "negative_prompt": params.get("negative_prompt"),
            "axes": {"seed": [seed + i for i in range(seeds)], "guidance_scale": guidance},
            "num_inference_steps": params.get("num_inference_steps"),
            "scheduler": params.get("scheduler"),
            "width": params.get("width"),
            "height": params.get("height"),
        }
        self.sweep_seeds.value = ", ".join(str(s) for s in self.sweep_spec["axes"]["seed"])
        self.sweep_guidance.value = ", ".join(f"{v:g}" for v in guidance)
        self.sweep_form.layout.display = None
        self.status.value = status_html("sweep form filled: edit the values and press Run sweep", "info")
        return dict(self.sweep_spec)

    def run_sweep(self):
        """Run the sweep of the form (`sweep_spec` with the form's seeds and CFG scales) with
        `sdlab.sweep`, and show it in a `SweepExplorer`. Returns the `SweepResult` or None."""
        from ..sweeps import sweep
        from .sweep_explorer import SweepExplorer

        self._begin("sweeping…")
        start = time.perf_counter()
        try:
            if self.sweep_spec is None:
                raise ValueError("no sweep yet: press `sweep` on a gallery image first")
            spec = dict(self.sweep_spec)
            spec["axes"] = {
                "seed": _number_list(self.sweep_seeds.value, "seed", "int"),
                "guidance_scale": _number_list(self.sweep_guidance.value, "guidance_scale", "float"),
            }
            self.sweep_spec = spec
            with self._run.pipeline_turn(self.backend, on_wait=self._waiting):
                self.state = "running"
                self.status.value = status_html("sweeping…", "busy")
                result = sweep(self.pipe, out_dir=self.sweep_dir, verbose=False, progress=self._progress, **spec)
            explorer = SweepExplorer(result)
        except (Interrupted, KeyboardInterrupt):
            self._cancelled()
            self.status.value = status_html(
                "sweep cancelled: no grid shown (the cells made before the cancel are kept in its cache)", "info"
            )
            return None
        except Exception as e:  # noqa: BLE001
            return self._fail(e)
        finally:
            self._end()
        self.last_sweep, self.explorer = result, explorer
        self.sweep_view.children = [explorer]
        failed = len(result.failed)
        cached = sum(1 for c in result.cells if c.cached)
        text = f"sweep: {len(result)} cells ({cached} cached) in {time.perf_counter() - start:.1f} s"
        self.state = "done"
        self.status.value = status_html(text + (f", {failed} failed" if failed else ""), "error" if failed else "ok")
        return result


def _caption(params: dict[str, Any]) -> str:
    """The seed and key parameters, shown under a thumbnail."""
    import html

    parts = [f"seed {params.get('seed')}"]
    if params.get("guidance_scale") is not None:
        parts.append(f"CFG {float(params['guidance_scale']):g}")
    if params.get("num_inference_steps") is not None:
        parts.append(f"{params['num_inference_steps']} steps")
    if params.get("scheduler"):
        parts.append(str(params["scheduler"]))
    if params.get("width") and params.get("height"):
        parts.append(f"{params['width']}x{params['height']}")
    return html.escape(" · ".join(parts))
