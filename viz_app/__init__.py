"""DeformLens' Gradio UI: pure render functions and the Blocks wiring that connects them."""
