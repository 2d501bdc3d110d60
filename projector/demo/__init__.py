"""The demo domain's data and the `projector demo` main job."""
