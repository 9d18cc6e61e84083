"""Launch: set-up, the shared config mechanism, staged pipeline scripts and the demo."""
