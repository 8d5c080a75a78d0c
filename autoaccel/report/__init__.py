"""Reports of a run: CSV tables, the Pareto plot, image grids and one HTML page."""
