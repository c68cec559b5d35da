"""API keys arrive with the API; the app exists now so that the layering is in place from the start."""
