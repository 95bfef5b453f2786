"""Counterfactual influence heatmaps inside the expert's region, and their faithfulness."""
