"""One image large: at its true aspect, its seed and key parameters, and buttons acting on it.

viewer = ImageViewer()
viewer.show(image, record, actions=[("reuse", "undo", "fill the controls", lambda: ...)])
viewer.params                 # the record on show (None when closed)
viewer.close_button.click()   # hides it
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from typing import Any

import ipywidgets as widgets

from ._common import image_widget, params_html

# The longer side of the large view, in CSS pixels; 64x64 images are enlarged 8x, nearest neighbour.
VIEW_BOX = 512

Action = tuple[str, str, str, Callable[[], Any]]  # label, icon, tooltip, what a click does


class ImageViewer(widgets.VBox):
    """A large view of one image with its record; hidden until `show`."""

    def __init__(self, *, box: int = VIEW_BOX):
        self.box = box
        self.image = None
        self.params: dict[str, Any] | None = None
        self.title = widgets.HTML()
        self.picture = widgets.Box(layout=widgets.Layout(flex="0 0 auto"))  # never squeezed by the record
        self.info = widgets.HTML(layout=widgets.Layout(width="420px"))
        self.buttons = widgets.VBox()
        self.close_button = widgets.Button(description="close", icon="times", layout=widgets.Layout(width="110px"))
        self.close_button.add_class("sdlab-viewer-close")
        self.close_button.on_click(lambda _: self.close())
        super().__init__(
            children=[
                self.title,
                widgets.HBox(
                    [self.picture, widgets.VBox([self.info, self.buttons])], layout=widgets.Layout(flex_flow="row wrap")
                ),
            ],
            layout=widgets.Layout(display="none", border="1px solid #ccc", padding="6px", margin="6px 0"),
        )
        self.add_class("sdlab-viewer")

    def show(self, image, params: dict[str, Any], *, title: str = "", actions: Sequence[Action] = ()) -> None:
        """Show `image` large (longer side `box` px, its aspect kept) with `params` and `actions`."""
        self.image, self.params = image, dict(params)
        title = title or f"seed {params.get('seed')}"
        self.title.value = f"<b>{html.escape(title)}</b>"
        large = image_widget(image, box=self.box, css_class="sdlab-large")
        self.picture.layout.min_width = large.layout.width  # a flex row may wrap the record below, not narrow it
        self.picture.children = [large]
        self.info.value = params_html(params) + f"<small>{image.width}x{image.height} px</small>"
        buttons = []
        for label, icon, tooltip, action in actions:
            button = widgets.Button(description=label, icon=icon, tooltip=tooltip, layout=widgets.Layout(width="110px"))
            button.on_click(lambda _b, action=action: action())
            buttons.append(button)
        self.buttons.children = [*buttons, self.close_button]
        self.layout.display = None

    def close(self) -> None:
        self.image = self.params = None
        self.picture.children = []
        self.layout.display = "none"
