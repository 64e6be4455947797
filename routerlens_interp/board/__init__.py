"""The live-ablation panel (the expert board): state, view, widget."""
